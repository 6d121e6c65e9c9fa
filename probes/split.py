"""Stratified splits in numpy (no scikit-learn at runtime): every class on both sides."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitdex.probes.errors import LabelError


def check_splittable(y: np.ndarray, classes: Sequence[str], minimum: int, why: str) -> None:
    """Refuse, naming them, the labels with fewer than `minimum` examples."""
    counts = np.bincount(y, minlength=len(classes))
    short = [f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < minimum)]
    if short:
        raise LabelError(
            f"too few examples for label {', '.join(short)}: {why} needs at least {minimum} per"
            " label; add examples or leave the label out"
        )


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) indices; each class holds out round(fraction * n), at least 1, keeps >= 1.

    Every class needs at least 2 examples (check_splittable says which do not).
    """
    kept, held = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_held = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k disjoint index sets covering y, each class dealt round-robin so folds stay balanced."""
    fold_of = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # start the next class where this one stopped: equal fold sizes
    return [np.flatnonzero(fold_of == f) for f in range(k)]
