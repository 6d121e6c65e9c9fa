"""Recall of an index against exact search, to check approximate kinds on real data."""

from __future__ import annotations

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
