"""Near-duplicate graph: kNN edges above a cosine threshold, and their connected components.

Built batch by batch through the index so memory stays O(N * k), never N x N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from vitdex.index.errors import IndexInputError
from vitdex.index.vector_index import VectorIndex, _as_ids, normalize

log = logging.getLogger(__name__)

# Approximate kinds (SQ8/PQ) perturb scores; candidates within this margin below the threshold
# are kept and then judged on the exact cosine recomputed from `vectors`.
SCORE_MARGIN = 0.02


def knn_graph(
    index: VectorIndex,
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
    threshold: float,
    batch: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (src_ids, dst_ids, cosine) between each vector and its k nearest neighbours with
    cosine >= threshold; self-edges dropped, each undirected pair once with src < dst.

    Scores are exact cosines from `vectors` (`ids[i]` is the id of `vectors[i]`); neighbours the
    index holds but `ids` does not name are ignored. A vector with more than k duplicates keeps
    only k edges, which usually still connects its group (see connected_components).
    """
    x = normalize(vectors, index.dim)
    id_arr = _as_ids(ids, len(x))
    n = len(x)
    if k < 1:
        raise IndexInputError(f"k must be >= 1, got {k}")
    order = np.argsort(id_arr, kind="stable")
    sorted_ids = id_arr[order]
    srcs, dsts, scs = [], [], []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        q = x[start:stop]
        d, nb = index.search(q, k + 1)  # +1: the vector itself is usually its first hit
        src_rows = np.repeat(np.arange(start, stop), k + 1)
        nb = nb.ravel()
        keep = (d.ravel() >= threshold - SCORE_MARGIN) & (nb >= 0)
        src_rows, nb = src_rows[keep], nb[keep]
        pos = np.searchsorted(sorted_ids, nb)
        pos[pos >= n] = 0
        known = sorted_ids[pos] == nb
        src_rows, dst_rows = src_rows[known], order[pos[known]]
        not_self = src_rows != dst_rows
        src_rows, dst_rows = src_rows[not_self], dst_rows[not_self]
        exact = np.einsum("ij,ij->i", x[src_rows], x[dst_rows])
        ok = exact >= threshold
        a, b = id_arr[src_rows[ok]], id_arr[dst_rows[ok]]
        srcs.append(np.minimum(a, b))
        dsts.append(np.maximum(a, b))
        scs.append(exact[ok].astype(np.float32))
        if progress is not None:
            progress(stop, n)
    if not srcs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    src, dst, sc = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(scs)
    order_e = np.lexsort((dst, src))
    src, dst, sc = src[order_e], dst[order_e], sc[order_e]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    log.info("knn graph: %d vectors, %d edges with cosine >= %.3f", n, int(first.sum()), threshold)
    return src[first], dst[first], sc[first]


def connected_components(src: np.ndarray, dst: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Component label (0..C-1, ordered by first appearance in `ids`) for each id.

    Vectorised union-find: hook each edge's larger root onto the smaller, then pointer-jump
    until every node points at its root; repeat until no edge joins two roots.
    """
    id_arr = _as_ids(ids)
    n = len(id_arr)
    src, dst = _as_ids(src), _as_ids(dst)
    if len(src) != len(dst):
        raise IndexInputError(f"{len(src)} sources for {len(dst)} destinations")
    order = np.argsort(id_arr, kind="stable")
    sorted_ids = id_arr[order]

    def rows_of(e: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, e)
        pos[pos >= n] = 0
        if n == 0 or not np.array_equal(sorted_ids[pos], e):
            raise IndexInputError("edges name ids that are not in `ids`")
        return order[pos]

    parent = np.arange(n)
    if len(src):
        a, b = rows_of(src), rows_of(dst)
        while True:
            ra, rb = parent[a], parent[b]
            differ = ra != rb
            if not differ.any():
                break
            lo, hi = np.minimum(ra, rb)[differ], np.maximum(ra, rb)[differ]
            np.minimum.at(parent, hi, lo)  # hi is a root: hook it under a smaller root
            while True:
                jumped = parent[parent]
                if np.array_equal(jumped, parent):
                    break
                parent = jumped
    _, first_idx, inverse = np.unique(parent, return_index=True, return_inverse=True)
    rank = np.empty(len(first_idx), np.int64)
    rank[np.argsort(first_idx, kind="stable")] = np.arange(len(first_idx))
    return rank[inverse]


def knn_graph_paged(
    index: VectorIndex,
    pages: Iterable[tuple[np.ndarray, np.ndarray]],
    nodes: np.ndarray,
    k: int,
    threshold: float,
    vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`knn_graph` over vectors that arrive in `pages` of (ids, vectors), so memory is one page
    plus the candidate edges, never all N vectors.

    Rows whose id is not in `nodes` are skipped, and so are neighbours outside `nodes`.
    Candidates (index score >= threshold - SCORE_MARGIN) are judged on the exact cosine of
    their two vectors, read back with `vectors_of(ids) -> (ids, vectors)` once the pages are
    done: only vectors that have a candidate edge are read twice.
    """
    if k < 1:
        raise IndexInputError(f"k must be >= 1, got {k}")
    node_ids = np.unique(_as_ids(nodes))
    n = len(node_ids)
    pairs: list[np.ndarray] = []
    done = 0
    for ids, vectors in pages:
        id_arr = _as_ids(ids, len(vectors))
        keep = np.isin(id_arr, node_ids, assume_unique=True)
        if not keep.any():
            continue
        id_arr = id_arr[keep]
        q = normalize(np.asarray(vectors)[keep], index.dim)
        d, nb = index.search(q, k + 1)
        src = np.repeat(id_arr, k + 1)
        nb = nb.ravel()
        cand = (d.ravel() >= threshold - SCORE_MARGIN) & (nb >= 0) & (nb != src)
        src, nb = src[cand], nb[cand]
        pos = np.minimum(np.searchsorted(node_ids, nb), max(n - 1, 0))
        known = node_ids[pos] == nb
        src, nb = src[known], nb[known]
        pairs.append(np.column_stack([np.minimum(src, nb), np.maximum(src, nb)]))
        done += len(id_arr)
        if progress is not None:
            progress(done, n)
    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    if not pairs:
        return empty
    edges = np.unique(np.concatenate(pairs), axis=0)
    if not len(edges):
        return empty
    got_ids, got = vectors_of(np.unique(edges))
    got = normalize(got, index.dim)
    order = np.argsort(got_ids, kind="stable")
    got_ids, got = got_ids[order], got[order]
    a = np.searchsorted(got_ids, edges[:, 0])
    b = np.searchsorted(got_ids, edges[:, 1])
    a, b = np.minimum(a, len(got_ids) - 1), np.minimum(b, len(got_ids) - 1)
    present = (got_ids[a] == edges[:, 0]) & (got_ids[b] == edges[:, 1])  # removed meanwhile
    edges, a, b = edges[present], a[present], b[present]
    exact = np.einsum("ij,ij->i", got[a], got[b])
    ok = exact >= threshold
    log.info(
        "knn graph (paged): %d vectors, %d candidates, %d edges with cosine >= %.3f",
        done, len(edges), int(ok.sum()), threshold,
    )  # fmt: skip
    return edges[ok, 0], edges[ok, 1], exact[ok].astype(np.float32)
