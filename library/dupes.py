"""Exact and near duplicates: groups of images, each with a suggested keeper. Reads only.

- Exact groups: images that share a content (same sha256). They are reported on their own.
- Near groups: connected components of the graph "cosine >= threshold" over distinct contents,
  built from k-nearest-neighbour search on a FAISS index (memory O(N * k), never N x N). Copies
  of one content have identical vectors, so a content is one node; a near group then lists every
  image of its contents, so it contains whole exact groups as well.
- The default threshold is calibrated per library, feature and model from the library's own
  score scale; see docs/dupes.md for the measurement behind RELATIVE_RADIUS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from vitdex.library.errors import LibraryError
from vitdex.library.ingest import under_clause
from vitdex.library.search import check_feature
from vitdex.storage import Content, Image, Vector, stack_blobs

if TYPE_CHECKING:
    from vitdex.index.vector_index import VectorIndex
    from vitdex.library.library import Library

log = logging.getLogger(__name__)

KEEP_RULE = (
    "keep the largest pixel count, then the largest file, then the oldest capture time"
    " (EXIF date taken, else file mtime), then the first path"
)
# A near duplicate is at most this fraction of the library's typical pair distance (1 - cosine)
# away. Measured in docs/dupes.md: edited copies sit at <= 0.0005, distinct photos at >= 0.14.
RELATIVE_RADIUS = 0.05
CALIBRATION_SAMPLE = 1000  # contents sampled for the median pair distance (~500k pairs)
MIN_CALIBRATION = 3  # fewer contents than this: assume a typical distance of 1 (orthogonal)
GRAPH_BATCH = 16_384  # queries per FAISS call; larger batches amortise the id filter
ID_CHUNK = 5000  # ids per SQL IN (...) list


def auto_threshold(vectors: np.ndarray) -> tuple[float, float]:
    """(threshold, median pair distance): 1 - RELATIVE_RADIUS * median(1 - cosine) over pairs.

    Relative, because models differ in scale: a random ViT's CLS vectors are all within a
    cosine of 0.9 of each other, a trained one's spread far wider.
    """
    if len(vectors) < MIN_CALIBRATION:
        typical = 1.0
    else:
        sims = vectors @ vectors.T
        typical = float(np.median(1.0 - sims[np.triu_indices(len(vectors), 1)]))
    return 1.0 - RELATIVE_RADIUS * typical, typical


def near_components(
    index: VectorIndex | _Restricted,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    threshold: float,
    k: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Component label per id of the graph "cosine >= threshold" among each id's k neighbours."""
    from vitdex.index.graph import connected_components, knn_graph

    src, dst, _ = knn_graph(index, vectors, ids, k, threshold, batch=GRAPH_BATCH, progress=progress)
    return connected_components(src, dst, ids)


class _Restricted:
    """The library's index seen through an id filter: just the `dim` and `search` that
    knn_graph uses, so the big index is reused instead of rebuilt for a subset of its ids."""

    def __init__(self, index: VectorIndex, allowed_ids: np.ndarray):
        self.dim = index.dim
        self._index = index
        self._allowed = np.unique(allowed_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k, allowed_ids=self._allowed)


@dataclass(frozen=True, slots=True)
class _Member:
    id: int
    path: str
    content_id: int
    pixels: int
    size: int
    time: float

    @property
    def keep_key(self) -> tuple:
        return (-self.pixels, -self.size, self.time, self.path)


def find_duplicates(
    library: Library,
    *,
    threshold: float | None = None,
    feature: str = "cls",
    under: str | Path | None = None,
    k: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Exact and near-duplicate groups: members, scores (cosine to the keeper), keeper."""
    if k < 1:
        raise ValueError("k must be at least 1")
    result = {
        "groups": [],
        "threshold": threshold,
        "rule": KEEP_RULE,
        "feature": feature,
        "threshold_source": "given" if threshold is not None else "auto",
    }
    spec = library.spec_row
    if spec is None:
        return result
    check_feature(library, feature)
    image_ids, content_ids = _scope(library, under)
    if threshold is None:
        sample = _calibration_sample(library, spec.id, feature, spec.dim)
        threshold, typical = auto_threshold(sample)
        result["threshold"] = threshold
        result["threshold_source"] = (
            f"auto: 1 - {RELATIVE_RADIUS} x median pair distance {typical:.4g}"
        )
    if not len(image_ids):
        return result

    # One node per content: its smallest image id in scope.
    order = np.lexsort((image_ids, content_ids))
    image_ids, content_ids = image_ids[order], content_ids[order]
    first = np.ones(len(order), bool)
    first[1:] = content_ids[1:] != content_ids[:-1]
    counts = np.diff(np.append(np.flatnonzero(first), len(order)))
    rep_ids, rep_contents = image_ids[first], content_ids[first]
    exact_contents = rep_contents[counts > 1]

    vectors = _content_vectors(library, spec.id, feature, rep_contents, spec.dim)
    labels = near_components(
        _graph_index(library, feature, rep_ids, vectors),
        rep_ids,
        vectors,
        threshold=threshold,
        k=k,
        progress=progress,
    )
    sizes = np.bincount(labels)
    near_sets = [rep_contents[labels == c] for c in np.flatnonzero(sizes > 1)]

    wanted = np.union1d(exact_contents, np.concatenate([*near_sets, np.empty(0, np.int64)]))
    members = _members(library, image_ids[np.isin(content_ids, wanted)])
    by_content: dict[int, list[_Member]] = {}
    for member in members:
        by_content.setdefault(member.content_id, []).append(member)
    row_of = {int(c): i for i, c in enumerate(rep_contents)}

    groups = [_group("exact", by_content[int(c)], vectors, row_of) for c in exact_contents]
    groups.sort(key=lambda g: g["keep"])
    near = [
        _group("near", [m for c in contents for m in by_content[int(c)]], vectors, row_of)
        for contents in near_sets
    ]
    groups.extend(sorted(near, key=lambda g: g["keep"]))
    result["groups"] = groups
    log.info(
        "%d exact and %d near duplicate groups (threshold %.4f)",
        len(exact_contents),
        len(near),
        threshold,
    )
    return result


def others(result: dict) -> list[str]:
    """Every group's non-keepers, sorted. Keepers follow one total order, so a near group's
    keeper also keeps its exact groups, and an exact keeper it outranks is listed."""
    return sorted(
        {m["path"] for g in result["groups"] for m in g["members"] if m["path"] != g["keep"]}
    )


def _group(kind: str, members: list[_Member], vectors: np.ndarray, row_of: dict[int, int]) -> dict:
    keeper = min(members, key=lambda m: m.keep_key)
    anchor = vectors[row_of[keeper.content_id]]
    scored = sorted(
        (
            (
                m,
                1.0
                if m.content_id == keeper.content_id
                else float(vectors[row_of[m.content_id]] @ anchor),
            )
            for m in members
        ),
        key=lambda pair: (pair[0] is not keeper, -pair[1], pair[0].path),
    )
    return {
        "kind": kind,
        "members": [{"path": m.path, "score": round(s, 6)} for m, s in scored],
        "keep": keeper.path,
    }


def _scope(library: Library, under: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, content ids) of the images in scope."""
    query = select(Image.id, Image.content_id)
    if under is not None:
        query = query.where(under_clause(Image.path, Path(under).expanduser().absolute()))
    with library.sessions() as session:
        rows = session.execute(query).all()
    pairs = np.array(rows, np.int64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _content_vectors(
    library: Library, spec_id: int, feature: str, contents: np.ndarray, dim: int
) -> np.ndarray:
    """The feature's vectors of `contents`, in that order."""
    out = np.empty((len(contents), dim), np.float32)
    position = {int(c): i for i, c in enumerate(contents)}
    with library.sessions() as session:
        for start in range(0, len(contents), ID_CHUNK):
            chunk = [int(c) for c in contents[start : start + ID_CHUNK]]
            rows = session.execute(
                select(Vector.content_id, Vector.data).where(
                    Vector.spec_id == spec_id,
                    Vector.feature == feature,
                    Vector.content_id.in_(chunk),
                )
            ).all()
            if len(rows) != len(chunk):
                raise LibraryError(
                    f"{len(chunk) - len(rows)} images have no stored {feature} vector;"
                    " run `vitdex ingest` on their folders again"
                )
            out[[position[r[0]] for r in rows]] = stack_blobs([r[1] for r in rows], dim)
    return out


def _calibration_sample(library: Library, spec_id: int, feature: str, dim: int) -> np.ndarray:
    """Vectors of up to CALIBRATION_SAMPLE contents of the whole library (fixed seed)."""
    with library.sessions() as session:
        contents = np.fromiter(
            session.scalars(
                select(Vector.content_id).where(
                    Vector.spec_id == spec_id, Vector.feature == feature
                )
            ),
            np.int64,
        )
    if len(contents) > CALIBRATION_SAMPLE:
        rng = np.random.default_rng(0)
        contents = np.sort(rng.choice(contents, CALIBRATION_SAMPLE, replace=False))
    return _content_vectors(library, spec_id, feature, contents, dim)


def _graph_index(
    library: Library, feature: str, rep_ids: np.ndarray, vectors: np.ndarray
) -> VectorIndex | _Restricted:
    """An index over exactly the representatives: a fresh exact one while that is cheap, else
    the library's own (filtered when it also holds copies or images out of scope)."""
    from vitdex.index.vector_index import VectorIndex, choose_kind

    if choose_kind(len(rep_ids)) == "flat":
        return VectorIndex.build(rep_ids, vectors, kind="flat")
    index = library.index(feature)
    if index.ntotal == len(rep_ids) and np.isin(rep_ids, index.ids()).all():
        return index
    return _Restricted(index, rep_ids)


def _members(library: Library, image_ids: np.ndarray) -> list[_Member]:
    members = []
    with library.sessions() as session:
        for start in range(0, len(image_ids), ID_CHUNK):
            chunk = [int(i) for i in image_ids[start : start + ID_CHUNK]]
            rows = session.execute(
                select(
                    Image.id,
                    Image.path,
                    Image.content_id,
                    Image.size,
                    Image.mtime_ns,
                    Content.width,
                    Content.height,
                    Content.taken_at,
                )
                .join(Content, Content.id == Image.content_id)
                .where(Image.id.in_(chunk))
            ).all()
            members.extend(
                _Member(
                    r.id,
                    r.path,
                    r.content_id,
                    r.width * r.height,
                    r.size,
                    _capture_time(r.taken_at, r.mtime_ns),
                )
                for r in rows
            )
    return members


def _capture_time(taken_at: str | None, mtime_ns: int) -> float:
    """Seconds since the epoch: EXIF date taken (local time, read as UTC), else file mtime."""
    if taken_at:
        try:
            return datetime.fromisoformat(taken_at).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    return mtime_ns / 1e9
