"""Stratified splits in numpy (no scikit-learn at runtime): every class on both sides.

With `groups` (one id per example, e.g. from `vitdex.probes.groups`), a group is never split: all
its examples fall on one side. A group is stratified by its most common label. Without groups,
every example is its own group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitdex.probes.errors import LabelError


def _group_labels(y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(label of each group: its most common, ties to the lowest; group index of each example)."""
    if groups is None:
        return np.asarray(y), np.arange(len(y))
    _, inverse = np.unique(groups, return_inverse=True)
    counts = np.zeros((inverse.max(initial=-1) + 1, int(y.max(initial=-1)) + 1), np.int64)
    np.add.at(counts, (inverse, y), 1)
    return counts.argmax(axis=1), inverse


def check_splittable(
    y: np.ndarray,
    classes: Sequence[str],
    minimum: int,
    why: str,
    groups: np.ndarray | None = None,
) -> None:
    """Refuse, naming them, the labels with fewer than `minimum` examples (groups, if given)."""
    label, _ = _group_labels(y, groups)
    counts = np.bincount(label, minlength=len(classes))
    short = [f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < minimum)]
    if short:
        what = "examples" if groups is None else "distinct images"
        note = "" if groups is None else " (identical files and near duplicates count once)"
        raise LabelError(
            f"too few {what} for label {', '.join(short)}{note}: {why} needs at least {minimum}"
            " per label; add examples or leave the label out"
        )


def stratified_split(
    y: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) indices; each class holds out about round(fraction * n) examples, at
    least one group, and keeps at least one group; groups are never split.

    Every class needs at least 2 groups (check_splittable says which do not).
    """
    label, inverse = _group_labels(y, groups)
    sizes = np.bincount(inverse, minlength=len(label))
    held_groups: list[int] = []
    for c in np.unique(label):
        members = rng.permutation(np.flatnonzero(label == c))
        target = max(1, round(fraction * int(sizes[members].sum())))
        taken = 0
        for group in members[:-1]:  # the last one is always kept
            if taken >= target:
                break
            held_groups.append(int(group))
            taken += int(sizes[group])
    held = np.isin(inverse, held_groups)
    return np.flatnonzero(~held), np.flatnonzero(held)


def stratified_folds(
    y: np.ndarray, k: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """k disjoint index sets covering y, each class's groups dealt round-robin so folds stay
    balanced; groups are never split."""
    label, inverse = _group_labels(y, groups)
    fold_of = np.empty(len(label), np.int64)
    offset = 0
    for c in np.unique(label):
        members = rng.permutation(np.flatnonzero(label == c))
        fold_of[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # start the next class where this one stopped: equal fold sizes
    example_fold = fold_of[inverse]
    return [np.flatnonzero(example_fold == f) for f in range(k)]
