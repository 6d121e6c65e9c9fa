"""Multinomial logistic regression in torch: full-batch L-BFGS, an L2 sweep with warm starts.

The objective is the (class-weighted) mean cross-entropy plus l2/2 * ||W||^2, the bias left
unpenalised. With three or more classes it is scikit-learn's (multinomial) LogisticRegression
with C = 1 / (l2 * n). With two, scikit-learn fits one logit v where we fit two rows (w0, w1): the
solution has w0 = -w1, v = w1 - w0, so our penalty is l2/4 * ||v||^2 and the match is
C = 2 / (l2 * n). C is the unit swept and reported, and `l2_of` converts, so a probe's C means
scikit-learn's C for any number of classes. Two exact
reparametrisations condition the problem for L-BFGS: inputs are centred (the bias is free), which
matters for embeddings that share a large common direction, and the weights are preconditioned by
the inputs' covariance (see `_preconditioner`), which puts weights and bias on the same curvature
scale. The loss and its gradient are computed by hand (two matrix products per evaluation, no
autograd) and L-BFGS is a small float32 implementation here (`lbfgs`), whose first step uses the
known curvature scale instead of torch's tiny first step plus extrapolation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from vitdex.probes.linear import LinearModel
from vitdex.probes.metrics import accuracy, balanced_accuracy, log_loss
from vitdex.probes.split import stratified_split

log = logging.getLogger(__name__)

# Inverse regularisation strengths, as scikit-learn's C (see `l2_of`; a value means the same at
# any n); one per decade, swept strongest first so each fit warm-starts from a smoother one.
C_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0)
VALIDATION_FRACTION = 0.2
MAX_ITER = 100  # scikit-learn's default for lbfgs
SWEEP_MAX_ITER = 15  # a sweep fit only has to rank its C; it starts warm from the previous one
# Past this many fitting examples the sweep fits on a stratified sample of them (C, unlike l2,
# carries over between sample sizes); the validation split is always scored whole.
SWEEP_MAX_EXAMPLES = 25_000
GRAD_TOLERANCE = 1e-5  # on the largest gradient entry in the preconditioned variables (V, b)
LOSS_TOLERANCE = 1e-6  # stop when an iteration lowers the objective by less than this, relatively
PATIENCE = 1  # the sweep stops at the first value that does not beat the best (unimodal)
# Below this many multiply-adds per pass (n * dim * classes) one thread is faster: OpenMP's thread
# handoff costs more than it saves, badly so on a busy machine (measured 100x on 300 x 32 x 5, and
# 450x on L-BFGS's vector algebra for 77k parameters, 12.6 s against 0.03 s per fit).
SINGLE_THREAD_WORK = 20_000_000
HISTORY_SIZE = 10  # L-BFGS correction pairs kept
ARMIJO = 1e-4  # sufficient decrease: loss(step) <= loss + ARMIJO * step * slope
MAX_LINE_SEARCH = 20
PRECONDITION_SAMPLE = 20_000  # rows used to estimate the preconditioner's covariance


def l2_of(c: float, n: int, n_classes: int) -> float:
    """The l2 of our objective that matches scikit-learn's C on n examples (see the module)."""
    return (2.0 if n_classes == 2 else 1.0) / (c * n)


@dataclass
class Tuned:
    """A model fitted with the C the sweep chose (at l2 = l2_of(C, n, classes)), and the sweep's
    record."""

    model: LinearModel
    c: float
    l2: float
    sweep: list[dict]
    selected_by: str
    refit: dict | None = None  # the final fit's iterations and seconds, when there was one


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (n_classes * count), scikit-learn's "balanced"; absent classes get weight 0."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.divide(len(y), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
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
    cov: torch.Tensor | None = None,
) -> tuple[LinearModel, int]:
    """Minimise the objective on (x, y); returns the model and the L-BFGS iterations it took.

    L-BFGS runs on (V, b) with W = V A, A from `_preconditioner`, where the data term's curvature
    is close to isotropic and matches the bias's; the objective, and so the solution, is
    unchanged. `cov` is covariance(x), passed in when several fits share x.
    """
    x = np.asarray(x, np.float32)
    n, dim = x.shape
    mean = x.mean(axis=0)
    features = torch.from_numpy(x - mean)
    targets = torch.from_numpy(np.asarray(y, np.int64))
    rows = torch.arange(n)
    sample_weight = None
    if balanced:
        sample_weight = torch.from_numpy(class_weights(y, n_classes)[y].astype(np.float32))
    precondition, restore = _preconditioner(covariance(x) if cov is None else cov, n_classes, l2)
    precondition_t = precondition.T.contiguous()  # dL/dV = dL/dW A^T
    theta = torch.zeros(n_classes * (dim + 1))
    variables, bias = theta[: n_classes * dim].view(n_classes, dim), theta[n_classes * dim :]
    if init is not None:  # the same scores on centred inputs: W (x - mean) + (b + W mean)
        variables.copy_(torch.from_numpy(init.weights) @ restore)
        bias.copy_(torch.from_numpy((init.bias + init.weights @ mean).astype(np.float32)))

    # Below SINGLE_THREAD_WORK one thread is faster: OpenMP's thread handoff costs more than it
    # saves, badly so on a busy machine. Only the two big products use more than one thread.
    threads = torch.get_num_threads() if n * dim * n_classes >= SINGLE_THREAD_WORK else 1

    def loss_and_gradient(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The mean (weighted) cross-entropy plus l2/2 ||W||^2, and its gradient in (V, b)."""
        w = theta[: n_classes * dim].view(n_classes, dim) @ precondition
        with _threads(threads):
            logits = torch.addmm(theta[n_classes * dim :], features, w.T)
        logits -= logits.max(dim=1, keepdim=True).values
        picked = logits[rows, targets]
        residual = logits.exp_()  # the softmax, in place
        total = residual.sum(dim=1)
        losses = total.log() - picked
        residual /= total[:, None]
        residual[rows, targets] -= 1
        if sample_weight is None:
            loss = losses.mean()
            residual /= n
        else:
            loss = (losses * sample_weight).mean()
            residual *= (sample_weight / n)[:, None]
        with _threads(threads):
            weight_gradient = torch.addmm(w, residual.T, features, alpha=1.0, beta=l2)
        gradient = torch.empty_like(theta)
        torch.mm(
            weight_gradient, precondition_t, out=gradient[: n_classes * dim].view(n_classes, dim)
        )
        torch.sum(residual, dim=0, out=gradient[n_classes * dim :])
        return float(loss) + 0.5 * l2 * float(w.pow(2).sum()), gradient

    with torch.no_grad(), _threads(1):
        # Near a uniform start the Hessian in (V, b) is about I / K: a first step of K times the
        # gradient is about Newton's, where torch's L-BFGS would start tiny and extrapolate.
        theta, iterations, evaluations = lbfgs(
            loss_and_gradient,
            theta,
            first_scale=float(n_classes),
            max_iter=max_iter,
            grad_tolerance=GRAD_TOLERANCE,
            loss_tolerance=loss_tolerance,
        )
        w = (theta[: n_classes * dim].view(n_classes, dim) @ precondition).numpy()
    log.debug(
        "fit: %d x %d, %d classes, l2 %.3g: %d iterations, %d evaluations",
        n,
        dim,
        n_classes,
        l2,
        iterations,
        evaluations,
    )
    b = (theta[n_classes * dim :].numpy() - w @ mean).astype(np.float32)
    return LinearModel(w.astype(np.float32), b), iterations


def lbfgs(
    loss_and_gradient: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    theta: torch.Tensor,
    *,
    first_scale: float,
    max_iter: int,
    grad_tolerance: float,
    loss_tolerance: float,
    history_size: int = HISTORY_SIZE,
) -> tuple[torch.Tensor, int, int]:
    """Minimise from theta with L-BFGS and a backtracking (Armijo) line search.

    Stops after max_iter iterations, when the largest gradient entry is at most grad_tolerance,
    when an iteration lowers the objective by less than loss_tolerance relative to it, or when
    the line search finds no decrease. Returns (theta, iterations, function evaluations).
    """
    loss, gradient = loss_and_gradient(theta)
    evaluations = 1
    steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / s.y)
    scale = first_scale  # the initial inverse Hessian, scale * I
    iterations = 0
    while iterations < max_iter and float(gradient.abs().max()) > grad_tolerance:
        direction = gradient.neg()  # two-loop recursion: direction = -H gradient
        alphas = []
        for s, y, rho in reversed(steps):
            alpha = rho * float(s @ direction)
            direction.add_(y, alpha=-alpha)
            alphas.append(alpha)
        direction.mul_(scale)
        for (s, y, rho), alpha in zip(steps, reversed(alphas), strict=True):
            direction.add_(s, alpha=alpha - rho * float(y @ direction))
        slope = float(gradient @ direction)
        if slope >= 0:  # not a descent direction (should not happen): restart from the gradient
            steps.clear()
            direction, slope = gradient * -scale, -scale * float(gradient @ gradient)
        step = 1.0
        for _ in range(MAX_LINE_SEARCH):
            new_loss, new_gradient = loss_and_gradient(theta + step * direction)
            evaluations += 1
            if new_loss <= loss + ARMIJO * step * slope:
                break
            # the minimum of the quadratic through loss, slope and new_loss, kept in [0.1, 0.5]
            curvature = new_loss - loss - slope * step
            shrink = -slope * step / (2 * curvature) if curvature > 0 else 0.5
            step *= min(max(shrink, 0.1), 0.5)
        else:
            break  # no decrease: as close as float32 gets
        iterations += 1
        s = direction.mul_(step)
        y = new_gradient - gradient
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):  # keep H positive definite
            steps.append((s, y, 1.0 / sy))
            del steps[:-history_size]
            scale = sy / float(y @ y)
        theta = theta + s
        decrease = loss - new_loss
        loss, gradient = new_loss, new_gradient
        if decrease <= loss_tolerance * max(abs(loss), 1e-12):
            break
    return theta, iterations, evaluations


def covariance(x: np.ndarray) -> torch.Tensor:
    """The covariance of x (float64), from at most PRECONDITION_SAMPLE evenly spaced rows."""
    sample = torch.from_numpy(np.asarray(x, np.float32)[:: max(1, len(x) // PRECONDITION_SAMPLE)])
    sample = sample - sample.mean(dim=0)
    return (sample.T @ sample).double() / len(sample)


def _preconditioner(cov: torch.Tensor, n_classes: int, l2: float) -> tuple[torch.Tensor, ...]:
    """A = L^-1 and L, where L L^T = S + K l2 I, S the inputs' covariance, K the classes.

    Near a uniform start the Hessian of the objective in each class's weights is about
    (S + K l2 I) / K, so in V = W A^-1 it is about I / K, like the bias's. Any A gives the same
    solution; a jitter keeps the Cholesky factorisation defined.
    """
    floor = n_classes * l2 + 1e-9 * float(cov.diagonal().mean())
    lower = torch.linalg.cholesky(cov + floor * torch.eye(len(cov), dtype=cov.dtype))
    inverse = torch.linalg.solve_triangular(
        lower, torch.eye(len(cov), dtype=cov.dtype), upper=False
    )
    return inverse.float(), lower.float()


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
    groups: np.ndarray | None = None,
) -> Tuned:
    """Choose C on a stratified validation split of (x, y) (whole `groups` on one side, see
    `stratified_split`); returns the chosen C's sweep model.

    The sweep runs strongest to weakest, each fit warm-started from the previous one, and stops
    once PATIENCE values in a row score below the best. Selection is by validation accuracy
    (balanced accuracy with `balanced`), ties broken by lower log loss. On large sets the sweep
    fits on a stratified sample of SWEEP_MAX_EXAMPLES of the non-validation examples.
    """
    fit_idx, val_idx = stratified_split(y, VALIDATION_FRACTION, rng, groups)
    if len(fit_idx) > SWEEP_MAX_EXAMPLES:
        sample, _ = stratified_split(y[fit_idx], 1 - SWEEP_MAX_EXAMPLES / len(fit_idx), rng)
        fit_idx = fit_idx[sample]
    selected_by = "balanced_accuracy" if balanced else "accuracy"
    rows: list[dict] = []
    best: tuple[float, float] | None = None
    best_model: LinearModel | None = None
    best_c = grid[0]
    model: LinearModel | None = None
    fit_x = np.asarray(x[fit_idx], np.float32)
    fit_cov = covariance(fit_x)
    worse_in_a_row = 0
    for c in sorted(grid):
        started = time.perf_counter()
        l2 = l2_of(c, len(fit_idx), n_classes)
        model, iterations = fit(
            fit_x,
            y[fit_idx],
            n_classes,
            l2,
            balanced=balanced,
            init=model,
            max_iter=SWEEP_MAX_ITER,
            cov=fit_cov,
        )
        scores = score(model, x[val_idx], y[val_idx], n_classes)
        rows.append(
            {
                "C": c,
                "l2": l2,
                "iterations": iterations,
                "fit_examples": len(fit_idx),
                "seconds": time.perf_counter() - started,
                **{f"val_{name}": value for name, value in scores.items()},
            }
        )
        key = (scores[selected_by], -scores["log_loss"])
        if best is None or key > best:
            best, best_model, best_c, worse_in_a_row = key, model, c, 0
        else:
            worse_in_a_row += 1
            if worse_in_a_row >= PATIENCE:
                break
    log.info("regularisation sweep chose C=%g by validation %s", best_c, selected_by)
    return Tuned(best_model, best_c, l2_of(best_c, len(fit_idx), n_classes), rows, selected_by)


def tune(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    balanced: bool = False,
    rng: np.random.Generator,
    grid: tuple[float, ...] = C_GRID,
    groups: np.ndarray | None = None,
) -> Tuned:
    """Sweep C on a validation split of (x, y), then refit on all of (x, y) at that C."""
    swept = sweep(x, y, n_classes, balanced=balanced, rng=rng, grid=grid, groups=groups)
    return refit(x, y, n_classes, swept, balanced=balanced)


def refit(x: np.ndarray, y: np.ndarray, n_classes: int, swept: Tuned, *, balanced: bool) -> Tuned:
    """The swept C fitted on all of (x, y), warm-started from the sweep's model at that C."""
    started = time.perf_counter()
    l2 = l2_of(swept.c, len(y), n_classes)
    final, iterations = fit(x, y, n_classes, l2, balanced=balanced, init=swept.model)
    record = {
        "iterations": iterations,
        "examples": len(y),
        "seconds": time.perf_counter() - started,
    }
    return Tuned(final, swept.c, l2, swept.sweep, swept.selected_by, record)
