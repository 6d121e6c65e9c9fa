"""Linear probe training speed: vitdex's torch L-BFGS sweep against scikit-learn, same data.

100k x 768 synthetic L2-normalised embeddings in 100 overlapping Gaussian classes (a shared
direction, like real ViT vectors, plus class centres and noise). Times
`vitdex.probes.train.fit_and_score`, exactly what `vitdex probe train` computes: hold out a 20%
evaluation split, sweep C on an inner split of the rest (fits on a 25k stratified sample), refit
the chosen C on the rest and score that on the held-out split, refit on all 100k points. Then
times scikit-learn's LogisticRegression (lbfgs) fitted once, at the C the sweep chose, on the
same 100k points: one fit against our whole pipeline.

    python bench/probe_train.py [--n 100000] [--dim 768] [--classes 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def synthetic_embeddings(
    n: int, dim: int, n_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=dim).astype(np.float32) * 4
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32) * 0.2
    y = rng.integers(0, n_classes, n)
    x = shared + centres[y] + rng.normal(size=(n, dim)).astype(np.float32) * 1.6
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", type=int, default=10_000, help="held-out points for accuracy")
    parser.add_argument("--sklearn-max-iter", type=int, default=100,
                        help="scikit-learn's lbfgs iteration cap (its default is 100)")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from vitdex.probes.train import fit_and_score

    x, y = synthetic_embeddings(args.n + args.test, args.dim, args.classes)
    x_train, y_train, x_test, y_test = x[: args.n], y[: args.n], x[args.n :], y[args.n :]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
          f" torch {torch.__version__} on {args.threads} threads")
    print("load average (1, 5, 15 min) at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"data: {args.n} x {args.dim} float32, {args.classes} classes,"
          f" {args.test} held-out test points")

    classes = [f"class{i}" for i in range(args.classes)]
    started = time.perf_counter()
    fitted = fit_and_score(x_train, y_train, classes, balanced=False,
                           rng=np.random.default_rng(0))
    tuned, validation = fitted.final, fitted.validation
    ours = time.perf_counter() - started
    accuracy = float(np.mean(tuned.model.proba(x_test).argmax(axis=1) == y_test))
    for row in tuned.sweep:
        print(f"  C={row['C']:g}  val_accuracy={row['val_accuracy']:.4f}"
              f"  iterations={row['iterations']:3d}  {row['seconds']:.1f}s")
    if tuned.refit is not None:
        print(f"  refit on {tuned.refit['examples']} at C={tuned.c:g}"
              f"  iterations={tuned.refit['iterations']:3d}  {tuned.refit['seconds']:.1f}s")
    print(f"vitdex probe training (sweep of {len(tuned.sweep)} values + final refit):"
          f" {ours:.1f}s, chose C={tuned.c:g}, held-out validation accuracy"
          f" {validation['accuracy']:.4f}, test accuracy {accuracy:.4f}")
    if args.no_sklearn:
        print("load average (1, 5, 15 min) at end: "
              + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        return

    from sklearn.linear_model import LogisticRegression

    c = tuned.c
    started = time.perf_counter()
    reference = LogisticRegression(C=c, solver="lbfgs", max_iter=args.sklearn_max_iter)
    reference.fit(x_train, y_train)
    theirs = time.perf_counter() - started
    print(f"scikit-learn LogisticRegression(lbfgs, C={c:.3g}, max_iter={args.sklearn_max_iter}),"
          f" one fit at the chosen C, no sweep: {theirs:.1f}s,"
          f" {reference.n_iter_[0]} iterations,"
          f" test accuracy {reference.score(x_test, y_test):.4f}")
    print(f"ratio: vitdex whole training / scikit-learn single fit = {ours / theirs:.2f}")
    print("load average (1, 5, 15 min) at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
