"""Multinomial logistic regression in torch: full-batch L-BFGS, an L2 sweep with warm starts.

The objective is the (class-weighted) mean cross-entropy plus l2/2 * ||W||^2, the bias left
unpenalised; it is scikit-learn's LogisticRegression with C = 1 / (l2 * n). Inputs are centred
before fitting (an exact reparametrisation, since the bias is free) which conditions L-BFGS much
better on embeddings that share a large common direction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitdex.probes.linear import LinearModel
from vitdex.probes.metrics import accuracy, balanced_accuracy, log_loss
from vitdex.probes.split import stratified_split

log = logging.getLogger(__name__)

# Inverse regularisation strengths, as scikit-learn's C (l2 = 1 / (C n), so a value means the
# same at any n); one per decade, swept strongest first so each fit warm-starts from a smoother one.
C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0)
VALIDATION_FRACTION = 0.2
MAX_ITER = 100  # scikit-learn's default for lbfgs
SWEEP_MAX_ITER = 15  # a sweep fit only has to rank its C; it starts warm from the previous one
# Past this many fitting examples the sweep fits on a stratified sample of them (C, unlike l2,
# carries over between sample sizes); the validation split is always scored whole.
SWEEP_MAX_EXAMPLES = 25_000
GRAD_TOLERANCE = 1e-5  # on the largest gradient entry of the mean loss (scikit-learn: 1e-4)
LOSS_TOLERANCE = 1e-6  # stop when an iteration changes the objective (or a weight) less than this
PATIENCE = 1  # the sweep stops at the first value that does not beat the best (unimodal)
# Below this many multiply-adds per pass (n * dim * classes) one thread is faster: OpenMP's thread
# handoff costs more than it saves, badly so on a busy machine (measured 100x on 300 x 32 x 5).
SINGLE_THREAD_WORK = 20_000_000


@dataclass
class Tuned:
    """A model fitted with the C the sweep chose (at l2 = 1 / (C n)), and the sweep's record."""

    model: LinearModel
    c: float
    l2: float
    sweep: list[dict]
    selected_by: str


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (n_classes * count), scikit-learn's "balanced"; absent classes get weight 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.divide(len(y), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)


@contextmanager
def _threads_for(work: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if work < SINGLE_THREAD_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float,
    *,
    balanced: bool = False,
    init: LinearModel | None = None,
    max_iter: int = MAX_ITER,
    loss_tolerance: float = LOSS_TOLERANCE,
) -> tuple[LinearModel, int]:
    """Minimise the objective on (x, y); returns the model and the L-BFGS iterations it took."""
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0)
    features = torch.from_numpy(x - mean)
    targets = torch.from_numpy(np.asarray(y, np.int64))
    sample_weight = None
    if balanced:
        sample_weight = torch.from_numpy(class_weights(y, n_classes)[y].astype(np.float32))
    if init is None:
        weights = torch.zeros(n_classes, x.shape[1])
        bias = torch.zeros(n_classes)
    else:  # the same scores on centred inputs: W (x - mean) + (b + W mean)
        weights = torch.from_numpy(init.weights.copy())
        bias = torch.from_numpy((init.bias + init.weights @ mean).astype(np.float32))
    weights.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=GRAD_TOLERANCE,
        tolerance_change=loss_tolerance, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.addmm(bias, features, weights.T)
        if sample_weight is None:
            loss = F.cross_entropy(logits, targets)
        else:
            loss = (F.cross_entropy(logits, targets, reduction="none") * sample_weight).mean()
        loss = loss + 0.5 * l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    with _threads_for(x.shape[0] * x.shape[1] * n_classes):
        optimizer.step(closure)
    iterations = optimizer.state[weights].get("n_iter", 0)
    w = weights.detach().numpy().astype(np.float32)
    b = (bias.detach().numpy() - w @ mean).astype(np.float32)
    return LinearModel(w, b), iterations


def score(model: LinearModel, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    proba = model.proba(x)
    predicted = proba.argmax(axis=1)
    return {
        "accuracy": accuracy(y, predicted),
        "balanced_accuracy": balanced_accuracy(y, predicted, n_classes),
        "log_loss": log_loss(y, proba),
    }


def sweep(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    balanced: bool = False,
    rng: np.random.Generator,
    grid: tuple[float, ...] = C_GRID,
) -> Tuned:
    """Choose C on a stratified validation split of (x, y); returns the chosen C's sweep model.

    The sweep runs strongest to weakest, each fit warm-started from the previous one, and stops
    once PATIENCE values in a row score below the best. Selection is by validation accuracy
    (balanced accuracy with `balanced`), ties broken by lower log loss. On large sets the sweep
    fits on a stratified sample of SWEEP_MAX_EXAMPLES of the non-validation examples.
    """
    fit_idx, val_idx = stratified_split(y, VALIDATION_FRACTION, rng)
    if len(fit_idx) > SWEEP_MAX_EXAMPLES:
        sample, _ = stratified_split(y[fit_idx], 1 - SWEEP_MAX_EXAMPLES / len(fit_idx), rng)
        fit_idx = fit_idx[sample]
    selected_by = "balanced_accuracy" if balanced else "accuracy"
    rows: list[dict] = []
    best: tuple[float, float] | None = None
    best_model: LinearModel | None = None
    best_c = grid[0]
    model: LinearModel | None = None
    worse_in_a_row = 0
    for c in sorted(grid):
        started = time.perf_counter()
        l2 = 1.0 / (c * len(fit_idx))
        model, iterations = fit(x[fit_idx], y[fit_idx], n_classes, l2, balanced=balanced,
                                init=model, max_iter=SWEEP_MAX_ITER)
        scores = score(model, x[val_idx], y[val_idx], n_classes)
        rows.append({"C": c, "l2": l2, "iterations": iterations, "fit_examples": len(fit_idx),
                     "seconds": time.perf_counter() - started,
                     **{f"val_{name}": value for name, value in scores.items()}})
        key = (scores[selected_by], -scores["log_loss"])
        if best is None or key > best:
            best, best_model, best_c, worse_in_a_row = key, model, c, 0
        else:
            worse_in_a_row += 1
            if worse_in_a_row >= PATIENCE:
                break
    log.info("regularisation sweep chose C=%g by validation %s", best_c, selected_by)
    return Tuned(best_model, best_c, 1.0 / (best_c * len(fit_idx)), rows, selected_by)


def tune(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    balanced: bool = False,
    rng: np.random.Generator,
    grid: tuple[float, ...] = C_GRID,
) -> Tuned:
    """Sweep C on a validation split of (x, y), then refit on all of (x, y) at that C."""
    swept = sweep(x, y, n_classes, balanced=balanced, rng=rng, grid=grid)
    l2 = 1.0 / (swept.c * len(y))
    final, _ = fit(x, y, n_classes, l2, balanced=balanced, init=swept.model)
    return Tuned(final, swept.c, l2, swept.sweep, swept.selected_by)
