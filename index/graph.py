"""Near-duplicate graph: kNN edges above a cosine threshold, and their connected components.

Built batch by batch through the index so memory stays O(N * k), never N x N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from vitdex.index.errors import IndexInputError
from vitdex.index.vector_index import RELEASE_EVERY, VectorIndex, _as_ids, normalize

log = logging.getLogger(__name__)

# Approximate kinds (SQ8/PQ) perturb scores; candidates within this margin below the threshold
# are kept and then judged on the exact cosine recomputed from `vectors`.
SCORE_MARGIN = 0.02
# `ivf_join`: each vector meets its own list and the lists of its 3 nearest other centroids,
# sought among the 128 centroids nearest to its own list's (measured in docs/benchmarks.md,
# "Duplicates": at 1M, 3 probes missed 1 planted pair in 10,000, 4 none).
JOIN_PROBES = 4
JOIN_CANDIDATES = 128


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
    if not pairs:
        return _no_edges()
    edges = np.unique(np.concatenate(pairs), axis=0)
    log.info("knn graph (paged): %d vectors, %d candidate pairs", done, len(edges))
    return judge_pairs(edges, vectors_of, index.dim, threshold)


def judge_pairs(
    pairs: np.ndarray,
    vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    dim: int,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate `pairs` ((E, 2) ids, a < b) whose exact cosine is >= threshold, as
    (src, dst, cosine); the vectors are read with `vectors_of(ids) -> (ids, vectors)`, and a
    pair whose vector is missing there (removed meanwhile) is dropped."""
    if not len(pairs):
        return _no_edges()
    got_ids, got = vectors_of(np.unique(pairs))
    got = normalize(got, dim)
    if not len(got_ids):
        return _no_edges()
    order = np.argsort(got_ids, kind="stable")
    got_ids, got = got_ids[order], got[order]
    a = np.minimum(np.searchsorted(got_ids, pairs[:, 0]), len(got_ids) - 1)
    b = np.minimum(np.searchsorted(got_ids, pairs[:, 1]), len(got_ids) - 1)
    present = (got_ids[a] == pairs[:, 0]) & (got_ids[b] == pairs[:, 1])
    pairs, a, b = pairs[present], a[present], b[present]
    exact = np.einsum("ij,ij->i", got[a], got[b])
    ok = exact >= threshold
    log.info("%d of %d candidate pairs have cosine >= %.4f", int(ok.sum()), len(pairs), threshold)
    return pairs[ok, 0], pairs[ok, 1], exact[ok].astype(np.float32)


def _no_edges() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def ivf_join(
    index: VectorIndex,
    nodes: np.ndarray,
    k: int,
    threshold: float,
    *,
    probes: int = JOIN_PROBES,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Candidate near-duplicate pairs ((E, 2) ids, a < b) among the `nodes` an IVF index holds,
    found without searching it, in BLAS products of vectors decoded from the lists' codes:
    1. each inverted list with itself;
    2. each vector with the lists of its `probes - 1` nearest other centroids (sought among
       the JOIN_CANDIDATES centroids nearest to its own list's), list by list: a list's
       vectors times those of every vector that probes it.
    Two near duplicates lie close together, so in one list or in each other's nearest lists.

    A pair is a candidate when its decoded cosine is >= threshold - SCORE_MARGIN (judge it on
    the exact vectors with `judge_pairs`), and only while it is among the k best candidates of
    one of its two ids, so the pairs stay O(N * k) whatever the threshold.
    """
    if k < 1:
        raise IndexInputError(f"k must be >= 1, got {k}")
    if probes < 1:
        raise IndexInputError(f"probes must be >= 1, got {probes}")
    node_ids = np.unique(_as_ids(nodes))
    sizes = index.list_sizes()
    lists = np.flatnonzero(sizes)
    if not len(lists) or not len(node_ids):
        return np.empty((0, 2), np.int64)
    centroids = normalize(index.centroids[lists], index.dim)
    nearest = _nearest_others(centroids, JOIN_CANDIDATES)
    others = min(probes - 1, nearest.shape[1])
    floor = threshold - SCORE_MARGIN
    found = _Candidates(k)
    total, done, steps = 2 * int(sizes.sum()), 0, 0

    def step(lst: int) -> None:
        """After each list: progress, and now and then a mapped file's pages let go (the RSS
        holds the lists read lately, not the file)."""
        nonlocal done, steps
        done, steps = done + int(sizes[lst]), steps + 1
        if steps % RELEASE_EVERY == 0:
            index.release_pages()
        if progress is not None:
            progress(done, total)

    probing: list[np.ndarray] = []  # (list position probed, list position, row in its list)
    for i, lst in enumerate(lists.tolist()):
        ids, x, rows = _node_vectors(index, lst, node_ids)
        if len(ids) > 1:
            found.add_block(ids, x, ids, x, floor, same=True)
        if others and len(ids):
            near = nearest[i]
            top = np.argpartition(-(x @ centroids[near].T), others - 1, axis=1)[:, :others]
            probed = near[top].ravel()
            probing.append(np.column_stack([probed, np.full(len(probed), i),
                                            np.repeat(rows, others)]))  # fmt: skip
        step(lst)
    if probing:
        records = np.concatenate(probing)
        del probing
        records = records[np.lexsort((records[:, 2], records[:, 1], records[:, 0]))]
        bounds = np.searchsorted(records[:, 0], np.arange(len(lists) + 1))
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            ids_b, xb, _ = _node_vectors(index, int(lists[b]), node_ids)
            if len(ids_b):
                ids_q, xq = _probing_vectors(index, lists, records[bounds[b] : bounds[b + 1]])
                found.add_block(ids_q, xq, ids_b, xb, floor, same=False)
            step(int(lists[b]))
    index.release_pages()
    if progress is not None:
        progress(total, total)
    pairs = found.pairs()
    log.info(
        "ivf join: %d vectors in %d lists, %d probes each, %d candidate pairs",
        total // 2, len(lists), 1 + others, len(pairs),
    )  # fmt: skip
    return pairs


def _nearest_others(centroids: np.ndarray, count: int) -> np.ndarray:
    """For each list (row of `centroids`), the `count` other lists with the nearest centroids."""
    n = len(centroids)
    m = min(count, n - 1)
    if m <= 0:
        return np.empty((n, 0), np.int64)
    sims = centroids @ centroids.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, m - 1, axis=1)[:, :m]


def _node_vectors(
    index: VectorIndex, lst: int, node_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, unit decoded vectors, rows in the list) of one list's members that are nodes."""
    ids, codes = index.list_codes(lst)
    pos = np.minimum(np.searchsorted(node_ids, ids), len(node_ids) - 1)
    rows = np.flatnonzero(node_ids[pos] == ids)
    x = index.decode(np.full(len(rows), lst), codes[rows])
    return ids[rows], _unit(x), rows


def _probing_vectors(
    index: VectorIndex, lists: np.ndarray, records: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, unit decoded vectors) of the vectors that `records` (probed, list position, row;
    sorted by list position) name, read from their own lists and decoded at once."""
    where = records[:, 1]
    starts = np.flatnonzero(np.diff(where, prepend=-1))
    ids, codes = [], []
    for start, stop in zip(starts, [*starts[1:], len(where)], strict=True):
        list_ids, list_codes = index.list_codes(int(lists[where[start]]))
        rows = records[start:stop, 2]
        ids.append(list_ids[rows])
        codes.append(list_codes[rows])
    return np.concatenate(ids), _unit(index.decode(lists[where], np.concatenate(codes)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Candidates:
    """Candidate pairs with their scores, kept at the k best of either end (O(N * k))."""

    REDUCE_AT = 4_000_000  # pairs held before the k-best rule is applied again

    def __init__(self, k: int):
        self.k = k
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.held = 0

    def add_block(
        self,
        ids_a: np.ndarray,
        xa: np.ndarray,
        ids_b: np.ndarray,
        xb: np.ndarray,
        floor: float,
        *,
        same: bool,
    ) -> None:
        scores = xa @ xb.T
        if same:
            scores[np.tril_indices(len(ids_a))] = -np.inf  # each pair once, no self pairs
        hits = scores >= floor
        count = int(np.count_nonzero(hits))
        if not count:
            return
        if count > self.k * (len(ids_a) + len(ids_b)):  # a dense block: each row's and column's
            hits &= _top_k_mask(scores, self.k)  # k best are all the k-best rule can keep
        r, c = np.nonzero(hits)
        a, b = ids_a[r], ids_b[c]
        self.parts.append((np.minimum(a, b), np.maximum(a, b), scores[r, c]))
        self.held += len(r)
        if self.held > self.REDUCE_AT:
            self.parts = [self._reduced()]
            self.held = len(self.parts[0][0])

    def _reduced(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, s = (np.concatenate(column) for column in zip(*self.parts, strict=True))
        order = np.lexsort((-s, b, a))  # a pair met twice (from both of its lists) counts once
        a, b, s = a[order], b[order], s[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, s = a[first], b[first], s[first]
        keep = np.zeros(len(a), bool)
        for end in (a, b):  # rank each pair among the pairs of this end, best first
            order = np.lexsort((-s, end))
            ends = end[order]
            first = np.searchsorted(ends, ends)  # where each end's run starts
            rank = np.arange(len(order)) - first
            keep[order[rank < self.k]] = True
        return a[keep], b[keep], s[keep]

    def pairs(self) -> np.ndarray:
        if not self.parts:
            return np.empty((0, 2), np.int64)
        a, b, _ = self._reduced()
        return np.unique(np.column_stack([a, b]), axis=0)


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """True where a score is among its row's k best or its column's k best."""
    mask = np.zeros(scores.shape, bool)
    rows, cols = scores.shape
    if cols > k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        mask[np.arange(rows)[:, None], top] = True
    else:
        mask[:] = True
    if rows > k:
        top = np.argpartition(-scores, k - 1, axis=0)[:k, :]
        mask[top, np.arange(cols)[None, :]] = True
    else:
        mask[:] = True
    return mask
