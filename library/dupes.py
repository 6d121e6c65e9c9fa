"""Exact and near duplicates: groups of images, each with a suggested keeper. Reads only.

- Exact groups: images that share a content (same sha256). They are reported on their own.
- Near groups: connected components of the graph "cosine >= threshold" over distinct contents,
  from each content's k best candidates (memory O(N * k), never N x N): a join of the library's
  IVF-SQ8 index list by list, else k-nearest-neighbour search on a FAISS index. Copies
  of one content have identical vectors, so a content is one node; a near group then lists every
  image of its contents, so it contains whole exact groups as well.
- The default threshold is calibrated per library, feature and model from the library's own
  score scale; see docs/dupes.md for the measurement behind RELATIVE_RADIUS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdex.storage import canonical, display, still_same

if TYPE_CHECKING:
    from vitdex.index.vector_index import VectorIndex
    from vitdex.library.library import Library
    from vitdex.storage import StoredImage, StoredSpec

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


def near_components_of(vectors: np.ndarray, *, threshold: float, k: int) -> np.ndarray:
    """Component label per row of `vectors` (not stored ones), over a fresh index of them."""
    from vitdex.index.vector_index import VectorIndex

    ids = np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex.build(ids, vectors, kind="auto")
    return near_components(index, ids, vectors, threshold=threshold, k=min(k, len(ids)))


class _Restricted:
    """The library's index seen through an id filter: just the `dim` and `search` that
    knn_graph uses, so the big index is reused instead of rebuilt for a subset of its ids."""

    def __init__(self, index: VectorIndex, allowed_ids: np.ndarray):
        self.dim = index.dim
        self._index = index
        self._allowed = np.unique(allowed_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k, allowed_ids=self._allowed)


def _keep_key(image: StoredImage) -> tuple:
    """The keeper order: most pixels, largest file, oldest capture time, first path."""
    return (
        -image.width * image.height,
        -image.size,
        _capture_time(image.taken_at, image.mtime_ns),
        image.path,
    )


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
    spec = library.store.spec()
    if spec is None:
        return result
    library.check_feature(feature)
    image_ids, content_ids = library.store.images.scope(
        canonical(under) if under is not None else None
    )
    if threshold is None:
        sample = _calibration_sample(library, spec, feature)
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

    labels = _near_labels(library, spec, feature, rep_ids, rep_contents, under, threshold, k,
                          progress)  # fmt: skip
    sizes = np.bincount(labels)
    near_sets = [rep_contents[labels == c] for c in np.flatnonzero(sizes > 1)]

    wanted = np.union1d(exact_contents, np.concatenate([*near_sets, np.empty(0, np.int64)]))
    vectors = library.store.vectors.of_contents(spec, feature, wanted)  # groups' members only
    row_of = {int(c): i for i, c in enumerate(wanted)}
    members = library.store.images.by_ids(image_ids[np.isin(content_ids, wanted)].tolist())
    by_content: dict[int, list[StoredImage]] = {}
    for member in members.values():
        by_content.setdefault(member.content_id, []).append(member)

    # An ingest may remove images while we read: a group left with one member is no group.
    exact = [by_content.get(int(c), []) for c in exact_contents]
    groups = [_group("exact", m, vectors, row_of) for m in exact if len(m) > 1]
    groups.sort(key=lambda g: g["keep"])
    near_members = [
        [m for c in contents for m in by_content.get(int(c), [])] for contents in near_sets
    ]
    near = [_group("near", m, vectors, row_of) for m in near_members if len(m) > 1]
    groups.extend(sorted(near, key=lambda g: g["keep"]))
    result["groups"] = groups
    log.info(
        "%d exact and %d near duplicate groups (threshold %.4f)",
        len(groups) - len(near),
        len(near),
        threshold,
    )
    return result


@dataclass
class Others:
    """The non-keepers that may be listed for deletion, and why the others were left out."""

    paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def others(library: Library, result: dict) -> Others:
    """Every group's non-keepers, sorted, that are still the very file that was ingested.

    Keepers follow one total order, so a near group's keeper also keeps its exact groups, and an
    exact keeper it outranks is listed. Nothing is listed on the strength of a path alone: a
    member whose file changed or vanished since it was ingested is left out, and so are all of a
    group's others when its keeper changed or vanished (they may be the only copy left).
    """
    ids = {m["id"] for g in result["groups"] for m in g["members"]}
    images = library.store.images.by_ids(ids)
    same = {i: i in images and still_same(images[i].identity) for i in ids}
    listed: set[str] = set()
    left_out: dict[str, str] = {}
    for group in result["groups"]:
        keeper, *rest = group["members"]
        if not same[keeper["id"]]:
            for member in rest:
                left_out.setdefault(
                    member["path"],
                    f"{display(member['path'])}: not listed: its keeper"
                    f" {display(keeper['path'])} changed or is gone since it was ingested",
                )
            continue
        for member in rest:
            if same[member["id"]]:
                listed.add(member["path"])
            else:
                left_out.setdefault(
                    member["path"],
                    f"{display(member['path'])}: not listed: it changed or is gone since it was"
                    " ingested",
                )
    warnings = [left_out[p] for p in sorted(left_out) if p not in listed]
    return Others(sorted(listed), warnings)


@dataclass
class ListFile:
    """The bytes of a --list-others file, and the paths it could not hold."""

    data: bytes
    written: int
    left_out: list[str]


def list_file(paths: Iterable[str], *, null: bool = False) -> ListFile:
    """Paths as a list file: one per line, or NUL-terminated raw bytes (`null`, for xargs -0).

    One per line cannot hold a name with a line break (it would read as two paths, perhaps of
    other, existing files) or one that is not UTF-8: such paths are left out, never written.
    """
    out: list[bytes] = []
    left_out: list[str] = []
    for path in paths:
        raw = os.fsencode(path)
        if null:
            out.append(raw + b"\0")
        elif path.splitlines() == [path] and _is_utf8(raw):
            out.append(raw + b"\n")
        else:
            left_out.append(path)
    return ListFile(b"".join(out), len(out), left_out)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _group(
    kind: str, members: list[StoredImage], vectors: np.ndarray, row_of: dict[int, int]
) -> dict:
    keeper = min(members, key=_keep_key)
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
        "members": [{"id": m.id, "path": m.path, "score": round(s, 6)} for m, s in scored],
        "keep": keeper.path,
    }


def _calibration_sample(library: Library, spec: StoredSpec, feature: str) -> np.ndarray:
    """Vectors of up to CALIBRATION_SAMPLE contents of the whole library (fixed seed)."""
    contents = library.store.vectors.content_ids(spec, feature)
    if len(contents) > CALIBRATION_SAMPLE:
        rng = np.random.default_rng(0)
        contents = np.sort(rng.choice(contents, CALIBRATION_SAMPLE, replace=False))
    return library.store.vectors.of_contents(spec, feature, contents)


def calibrated_threshold(library: Library, feature: str, extra: np.ndarray | None = None) -> float:
    """The near-duplicate threshold `find_duplicates` calibrates for the library's feature;
    `extra` vectors (embedded, not stored) fill the sample up to CALIBRATION_SAMPLE."""
    spec = library.store.spec()
    parts = [] if spec is None else [_calibration_sample(library, spec, feature)]
    room = CALIBRATION_SAMPLE - sum(len(part) for part in parts)
    if extra is not None and len(extra) and room > 0:
        parts.append(np.asarray(extra, np.float32)[:: -(-len(extra) // room)])  # evenly spaced
    return auto_threshold(np.concatenate(parts) if parts else np.empty((0, 0), np.float32))[0]


def _near_labels(
    library: Library,
    spec: StoredSpec,
    feature: str,
    rep_ids: np.ndarray,
    rep_contents: np.ndarray,
    under: str | Path | None,
    threshold: float,
    k: int,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """Near-group label per representative. While an exact index is cheap (choose_kind says
    flat), a fresh one over the representatives' vectors. Past that, the library's own index:
    an IVF-SQ8 one (the auto kind) is joined list by list, each vector with its own list and
    its nearest other lists (ivf_join: no search at all); any other is queried with the
    vectors streamed in pages (knn_graph_paged). Memory stays one list or page plus the
    candidate pairs, never every vector; the candidates are judged on their exact vectors,
    read back by id."""
    from vitdex.index.graph import connected_components, ivf_join, judge_pairs, knn_graph_paged
    from vitdex.index.vector_index import VectorIndex, choose_kind

    store = library.store
    if choose_kind(len(rep_ids)) == "flat":
        vectors = store.vectors.of_contents(spec, feature, rep_contents)
        index = VectorIndex.build(rep_ids, vectors, kind="flat")
        return near_components(index, rep_ids, vectors, threshold=threshold, k=k,
                               progress=progress)  # fmt: skip

    def vectors_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return store.vectors.of_image_ids(spec, feature, ids)

    with store.snapshot():
        index = library.index(feature)
        if index.kind == "ivfsq8":
            pairs = ivf_join(index, rep_ids, k, threshold, progress=progress)
            src, dst, _ = judge_pairs(pairs, vectors_of, index.dim, threshold)
        else:
            scope = canonical(under) if under is not None else None
            pages = (
                (p.ids, p.vectors) for p in store.vectors.iter_pages(spec, feature, under=scope)
            )
            src, dst, _ = knn_graph_paged(
                _graph_index(index, rep_ids), pages, rep_ids, k, threshold, vectors_of,
                progress=progress,
            )  # fmt: skip
    return connected_components(src, dst, rep_ids)


def _graph_index(index: VectorIndex, rep_ids: np.ndarray) -> VectorIndex | _Restricted:
    """The library's own index, filtered when it also holds copies or images out of scope."""
    if index.ntotal == len(rep_ids) and np.isin(rep_ids, index.ids()).all():
        return index
    return _Restricted(index, rep_ids)


def _capture_time(taken_at: str | None, mtime_ns: int) -> float:
    """Seconds since the epoch: EXIF date taken (local time, read as UTC), else file mtime."""
    if taken_at:
        try:
            return datetime.fromisoformat(taken_at).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    return mtime_ns / 1e9
