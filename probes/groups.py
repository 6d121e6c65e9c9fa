"""Content groups of labelled images, so that no split puts one picture on both sides.

Identical files (same sha256) are one content; contents whose vectors are near duplicates at the
library's calibrated threshold (the `vitdex dupes` machinery: a kNN graph, then its connected
components) join one group. Splitting by group keeps copies and edited copies of a picture on
one side, where a split by path would score a model on pictures it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 16  # k of the kNN graph, as `vitdex dupes` uses


@dataclass
class ContentGroups:
    """A group id per example and what joined them."""

    group: np.ndarray  # int64, one per example; equal ids never fall on two sides of a split
    threshold: float  # cosine at and above which two contents are near duplicates
    identical: int  # examples whose file content another example also has
    near: int  # examples grouped with another content only through near-duplicate vectors

    @property
    def count(self) -> int:
        return len(np.unique(self.group))

    def summary(self) -> dict:
        return {
            "groups": self.count,
            "identical": self.identical,
            "near": self.near,
            "threshold": self.threshold,
        }


def content_groups(
    sha256s: Sequence[str], vectors: np.ndarray, threshold: float, *, k: int = NEIGHBOURS
) -> ContentGroups:
    """Group examples by content (sha256) and near-duplicate vectors (cosine >= threshold)."""
    from vitdex.library.dupes import near_components_of

    if not len(sha256s):
        return ContentGroups(np.empty(0, np.int64), threshold, 0, 0)
    _, first, content = np.unique(np.asarray(sha256s), return_index=True, return_inverse=True)
    reps = np.asarray(vectors, np.float32)[first]
    component = near_components_of(reps, threshold=threshold, k=k)
    group = component[content].astype(np.int64)
    copies = np.bincount(content)
    identical = int(copies[copies > 1].sum())
    contents_per_group = np.bincount(component)
    near = int(np.sum(contents_per_group[group] > 1))
    return ContentGroups(group, threshold, identical, near)
