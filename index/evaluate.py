"""Recall of an index against exact search, to check approximate kinds on real data."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vitdex.index.vector_index import VectorIndex, _as_ids, normalize


def recall_at_k(
    index: VectorIndex,
    vectors: np.ndarray,
    ids: np.ndarray,
    sample: int = 1000,
    k: int = 10,
    seed: int = 0,
) -> float:
    """Mean fraction of the exact top-k ids (brute force over `vectors`) that `index` returns.

    Queries are `sample` rows of `vectors` drawn with `seed`; nothing is excluded, so each
    query's own id counts as a neighbour in both lists. `ids[i]` is the id of `vectors[i]`.
    """
    import faiss

    x = normalize(vectors, index.dim)
    id_arr = _as_ids(ids, len(x))
    n = len(x)
    if n == 0:
        return 1.0
    k = min(k, n)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    q = x[rows]
    _, gt = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    gt_ids = id_arr[gt]
    _, got = index.search(q, k)
    hits = sum(len(np.intersect1d(g, r[r >= 0])) for g, r in zip(gt_ids, got, strict=True))
    return hits / (len(rows) * k)


def recall_at_k_paged(
    index: VectorIndex,
    queries: np.ndarray,
    pages: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int = 10,
) -> float:
    """`recall_at_k` with the exact top-k computed over `pages` of (ids, vectors) as they
    stream by (a running top-k per query), so memory is one page, not every vector.

    `queries` are vectors of the pages; nothing is excluded, as in `recall_at_k`."""
    import faiss

    q = normalize(queries, index.dim)
    if not len(q):
        return 1.0
    k = min(k, index.ntotal) if index.ntotal else k
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    seen = 0
    for ids, vectors in pages:
        x = normalize(vectors, index.dim)
        id_arr = _as_ids(ids, len(x))
        if not len(x):
            continue
        kk = min(k, len(x))
        dist, found = faiss.knn(q, x, kk, metric=faiss.METRIC_INNER_PRODUCT)
        if kk < k:
            dist = np.hstack([dist, np.full((len(q), k - kk), -np.inf, np.float32)])
            found = np.hstack([id_arr[found], np.full((len(q), k - kk), -1, np.int64)])
        else:
            found = id_arr[found]
        heap.add_result(np.ascontiguousarray(dist), np.ascontiguousarray(found))
        seen += len(x)
    heap.finalize()
    k = min(k, seen)
    gt_ids = heap.I[:, :k]
    _, got = index.search(q, k)
    hits = sum(len(np.intersect1d(g, r[r >= 0])) for g, r in zip(gt_ids, got, strict=True))
    return hits / (len(q) * k)
