"""vitdex.index: ids, scores, filters, persistence, recall, duplicate graph, kind choice."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import vitdex.index.vector_index as vi
from vitdex.index import (
    INDEX_KINDS,
    IndexFileError,
    IndexInputError,
    IndexKindError,
    VectorIndex,
    choose_kind,
    connected_components,
    knn_graph,
    recall_at_k,
)
from vitdex.index.graph import ivf_join, judge_pairs
from vitdex.library.errors import VitdexError

N, D = vi.PQ_MIN_VECTORS, 64  # the fewest vectors ivfpq trains on
BUILD_ARGS = {
    "flat": {},
    "hnsw": {"M": 16},
    "ivfsq8": {"nlist": 32},
    "ivfpq": {"nlist": 32, "m": 16},
}


def clustered(n: int = N, d: int = D, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    # sparse, shuffled ids so FAISS's own row numbers would never pass for them
    ids = np.random.default_rng(1).permutation(np.arange(N, dtype=np.int64) * 11 + 5)
    return ids, clustered()


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    ids, x = data
    return {kind: VectorIndex.build(ids, x, kind, **BUILD_ARGS[kind]) for kind in INDEX_KINDS}


def test_import_does_not_load_faiss():
    code = "import sys, vitdex.index; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_errors_are_vitdex_errors():
    for exc in (IndexFileError, IndexKindError, IndexInputError):
        assert issubclass(exc, VitdexError)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_ids_are_faiss_ids(built, data, kind):
    ids, x = data
    index = built[kind]
    assert index.kind == kind and index.ntotal == N and index.dim == D
    assert np.array_equal(np.sort(index.ids()), np.sort(ids))
    _, found = index.search(x[:50], 5)
    assert np.isin(found, ids).all()
    if kind != "ivfpq":  # PQ's code error can rank another vector above the query itself
        assert np.mean(found[:, 0] == ids[:50]) > 0.95


def test_flat_scores_are_cosine_and_descending(built, data):
    ids, x = data
    raw = x[:7] * 3.0  # unnormalised queries are normalised
    scores, found = built["flat"].search(raw, 20)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 0)
    row_of = {int(i): r for r, i in enumerate(ids)}
    expected = np.array([[x[q] @ x[row_of[int(i)]] for i in found[q]] for q in range(7)])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    exact = np.sort(x[:7] @ x.T, axis=1)[:, ::-1][:, :20]
    np.testing.assert_allclose(scores, exact, atol=1e-5)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_scores_descending_and_padding(built, data, kind):
    _, x = data
    scores, _ = built[kind].search(x[:20], 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    small = VectorIndex.build(np.array([4, 9]), x[:2], "flat")
    scores, found = small.search(x[:1], 5)
    assert found[0].tolist()[:2] == [4, 9] and found[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


def test_empty_index_searches():
    index = VectorIndex.build(np.empty(0, np.int64), np.empty((0, 8), np.float32), "auto")
    assert index.kind == "flat" and index.ntotal == 0
    scores, found = index.search(np.ones((2, 8), np.float32), 3)
    assert (found == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("kind", ["flat", "ivfsq8"])  # ivfpq removes like ivfsq8
def test_add_and_remove(data, kind):
    ids, x = data
    index = VectorIndex.build(ids[:4000], x[:4000], kind, **BUILD_ARGS[kind])
    index.add(ids[4000:], x[4000:])
    assert index.ntotal == N and set(index.ids().tolist()) == set(ids.tolist())
    with pytest.raises(IndexInputError, match="already in the index"):
        index.add(ids[:1], x[:1])
    gone = ids[:100]
    assert index.remove(np.concatenate([gone, [10**9]])) == 100
    assert index.ntotal == N - 100
    assert not np.isin(gone, index.ids()).any()
    _, found = index.search(x[:100], 10)
    assert not np.isin(found, gone).any()
    if kind == "flat":
        _, found = index.search(x[100:150], 1)
        assert np.array_equal(found[:, 0], ids[100:150])


def test_hnsw_cannot_remove(built, data):
    assert not built["hnsw"].can_remove and built["flat"].can_remove
    with pytest.raises(IndexKindError, match="rebuild"):
        built["hnsw"].remove(data[0][:3])


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_selector_restricts_and_fills_k(built, data, kind):
    ids, x = data
    rng = np.random.default_rng(3)
    allowed = rng.choice(ids, 15, replace=False)  # scattered over every cluster/list
    scores, found = built[kind].search(x[:30], 10, allowed_ids=allowed)
    assert np.isin(found, allowed).all()  # k results: no -1 padding
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    if kind == "flat":  # exact: the best 10 of the 15
        row_of = {int(i): r for r, i in enumerate(ids)}
        sims = x[:30] @ x[[row_of[int(i)] for i in allowed]].T
        np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], atol=1e-5)
    # fewer allowed ids than k (one not even in the index): all of them, then padding
    few = np.array([ids[0], ids[1], ids[2], 10**9])
    _, found = built[kind].search(x[:3], 10, allowed_ids=few)
    assert set(found[:, :3].ravel().tolist()) == set(ids[:3].tolist())
    assert (found[:, 3:] == -1).all()
    _, found = built[kind].search(x[:2], 10, allowed_ids=np.empty(0, np.int64))
    assert (found == -1).all()


def test_bad_inputs(data):
    ids, x = data
    with pytest.raises(IndexKindError):
        VectorIndex.build(ids, x, "lsh")
    with pytest.raises(IndexInputError):
        VectorIndex.build(ids[:10], x[:11], "flat")
    with pytest.raises(IndexInputError, match="duplicates"):
        VectorIndex.build(np.zeros(3, np.int64), x[:3], "flat")
    index = VectorIndex.build(ids[:10], x[:10], "flat")
    with pytest.raises(IndexInputError, match="dimension"):
        index.search(np.ones((1, D + 1), np.float32), 3)


def test_recall_at_k(built, data):
    ids, x = data
    assert recall_at_k(built["flat"], x, ids, sample=300) == 1.0
    assert recall_at_k(built["ivfsq8"], x, ids, sample=300) >= 0.9
    assert recall_at_k(built["hnsw"], x, ids, sample=300) >= 0.9
    assert built["ivfsq8"].params["calibrated_recall"] >= vi.RECALL_TARGET


def test_escalation_reaches_exhaustive_for_ivf(data):
    ids, x = data
    index = VectorIndex.build(ids, x, "ivfsq8", nlist=64, nprobe=1)
    allowed = ids[np.random.default_rng(5).choice(N, 12, replace=False)]
    _, found = index.search(x[:20], 10, allowed_ids=allowed)
    assert np.isin(found, allowed).all()
    assert index.params["nprobe"] == 1  # escalation does not change the stored default


def test_knn_graph_finds_planted_duplicates():
    rng = np.random.default_rng(7)
    base = clustered(2000, 32, clusters=10, seed=7)
    pairs = rng.choice(2000, 60, replace=False)
    dupes = base[pairs] + 0.01 * rng.standard_normal((60, 32)).astype(np.float32)
    x = np.vstack([base, dupes / np.linalg.norm(dupes, axis=1, keepdims=True)])
    ids = np.arange(len(x), dtype=np.int64) + 1000
    threshold = 0.995
    for kind, args in (("flat", {}), ("ivfsq8", {"nlist": 16})):
        index = VectorIndex.build(ids, x, kind, **args)
        src, dst, scores = knn_graph(index, x, ids, k=5, threshold=threshold, batch=500)
        found = set(zip(src.tolist(), dst.tolist(), strict=True))
        planted = {(int(ids[p]), int(ids[2000 + i])) for i, p in enumerate(pairs)}
        assert planted <= found
        assert np.all(scores >= threshold) and np.all(src < dst)
        assert len(found) == len(src)  # each undirected pair once
        sims = np.einsum("ij,ij->i", x[src - 1000], x[dst - 1000])
        np.testing.assert_allclose(scores, sims, atol=1e-5)
        exact = x @ x.T
        np.fill_diagonal(exact, -1)
        assert len(src) == int((np.triu(exact) >= threshold).sum())


def test_ivf_join_finds_what_the_search_finds_without_searching(monkeypatch):
    """Planted near duplicates, many across two lists: the list join finds every pair the exact
    graph has, judged on exact vectors, and never calls the index's search."""
    rng = np.random.default_rng(8)
    base = clustered(4000, 32, clusters=12, seed=8)
    pairs = rng.choice(4000, 200, replace=False)
    dupes = base[pairs] + 0.02 * rng.standard_normal((200, 32)).astype(np.float32)
    x = np.vstack([base, dupes / np.linalg.norm(dupes, axis=1, keepdims=True)])
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7
    index = VectorIndex.build(ids, x, "ivfsq8", nlist=64)
    home = {}
    for lst in np.flatnonzero(index.list_sizes()).tolist():
        list_ids, codes = index.list_codes(lst)
        decoded = index.decode(np.full(len(codes), lst), codes)
        np.testing.assert_allclose(decoded, x[(list_ids - 7) // 3], atol=0.01)  # SQ8 error
        home.update(dict.fromkeys(list_ids.tolist(), lst))
    threshold = 0.99
    exact = x @ x.T
    np.fill_diagonal(exact, -1)
    expected = {
        (int(ids[a]), int(ids[b]))
        for a, b in zip(*np.nonzero(np.triu(exact) >= threshold), strict=True)
    }
    across = sum(home[a] != home[b] for a, b in expected)
    assert len(expected) >= 150 and across >= 5  # some pairs lie in two neighbouring lists
    monkeypatch.setattr(VectorIndex, "search", lambda *a, **kw: pytest.fail("searched"))

    def vectors_of(wanted):
        return wanted, x[(wanted - 7) // 3]

    candidates = ivf_join(index, ids, 16, threshold)
    src, dst, scores = judge_pairs(candidates, vectors_of, 32, threshold)
    assert set(zip(src.tolist(), dst.tolist(), strict=True)) == expected
    np.testing.assert_allclose(scores, exact[(src - 7) // 3, (dst - 7) // 3], atol=1e-5)
    alone = judge_pairs(ivf_join(index, ids, 16, threshold, probes=1), vectors_of, 32, threshold)
    assert len(alone[0]) == len(expected) - across  # each list by itself misses those
    # nodes: pairs among other ids are not candidates
    some = ids[::2]
    assert np.isin(ivf_join(index, some, 16, threshold), some).all()


def test_ivf_join_keeps_k_candidates_per_id_whatever_the_threshold():
    x = clustered(3000, 32, clusters=6, seed=9)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(ids, x, "ivfsq8", nlist=16)
    pairs = ivf_join(index, ids, 4, threshold=-1.0)  # every pair qualifies
    assert len(pairs) <= 2 * 4 * 3000 and (pairs[:, 0] < pairs[:, 1]).all()
    degree = np.bincount(pairs.ravel(), minlength=3000)
    assert degree.min() >= 4  # each id kept its 4 best, so it is in at least 4 pairs
    partners = pairs[(pairs == 0).any(axis=1)].ravel()
    best = np.argsort(x @ x[0])[-5:-1]  # id 0's 4 nearest (itself, the nearest, left out)
    assert np.isin(best, partners).sum() >= 3  # decoded scores may swap a close 4th and 5th


def test_connected_components_groups_chains():
    ids = np.array([10, 20, 30, 40, 50, 60], np.int64)
    labels = connected_components(np.array([10, 20, 50]), np.array([20, 30, 60]), ids)
    assert labels.tolist() == [0, 0, 0, 1, 2, 2]
    no_edges = np.empty(0, np.int64)
    assert connected_components(no_edges, no_edges, ids).tolist() == [0, 1, 2, 3, 4, 5]
    # a long chain given in scrambled order, plus a star
    n = 1000
    chain = np.random.default_rng(0).permutation(n - 1)
    src = np.concatenate([chain, np.full(5, n + 1)])
    dst = np.concatenate([chain + 1, np.arange(n + 2, n + 7)])
    labels = connected_components(src, dst, np.arange(n + 10))
    assert (labels[:n] == 0).all() and (labels[n + 1 : n + 7] == labels[n + 1]).all()
    assert len(np.unique(labels)) == 1 + 1 + 1 + 3  # chain, lone n, star, lone n+7..n+9
    with pytest.raises(IndexInputError):
        connected_components(np.array([1]), np.array([99]), np.array([1, 2]))


def test_choose_kind_thresholds():
    assert choose_kind(0) == "flat"
    assert choose_kind(vi.FLAT_MAX_N) == "flat"
    assert choose_kind(vi.FLAT_MAX_N + 1) == vi.AUTO_APPROX_KIND == "ivfsq8"
    assert choose_kind(1_000_000) == "ivfsq8"
    assert VectorIndex.build(np.arange(5), clustered(5), "auto").kind == "flat"


# smallest sizes each kind accepts (and a few above), with the nlist FAISS gets by default
SMALL_BUILDS = [
    ("flat", 1, {}),
    ("hnsw", 1, {}),
    ("hnsw", 5, {}),
    ("ivfsq8", 1, {}),
    ("ivfsq8", 38, {}),  # one list: its centroid is the mean, no k-means
    ("ivfsq8", 78, {}),  # two lists, 39 points each: the first k-means
    ("ivfsq8", 156, {"nlist": 4}),
    ("ivfpq", vi.PQ_MIN_VECTORS, {}),
]


@pytest.mark.parametrize(("kind", "n", "args"), SMALL_BUILDS)
def test_small_builds_print_nothing(capfd, kind, n, args):
    """FAISS's C++ warnings ("WARNING clustering 30 points to 1 centroids ...") go straight to
    fd 2; sizes are checked before training so a user never sees them."""
    x = clustered(n, D, clusters=max(1, min(n // 40, 20)), seed=n)
    index = VectorIndex.build(np.arange(n) + 100, x, kind, **args)
    assert index.ntotal == n and vi.min_vectors(kind) <= n
    _, found = index.search(x[:1], 1)
    assert found[0, 0] == 100 or kind == "ivfpq"
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.parametrize(
    ("kind", "n", "args", "error", "message"),
    [
        ("ivfpq", vi.PQ_MIN_VECTORS - 1, {}, IndexKindError, f"at least {vi.PQ_MIN_VECTORS}"),
        ("ivfpq", 300, {"nlist": 1}, IndexKindError, f"at least {vi.PQ_MIN_VECTORS}"),
        ("ivfsq8", 0, {}, IndexKindError, "at least 1 "),
        ("ivfsq8", 200, {"nlist": 8}, IndexInputError, "nlist=8 needs at least 312"),
    ],
)
def test_too_few_vectors_fail_before_training(capfd, monkeypatch, kind, n, args, error, message):
    import faiss

    def never(*args, **kwargs):
        raise AssertionError("trained although the build must be refused")

    for name in ("Clustering", "IndexIVFPQ", "IndexIVFScalarQuantizer", "IndexFlatIP"):
        monkeypatch.setattr(faiss, name, never)
    with pytest.raises(error, match=message):
        VectorIndex.build(np.arange(n), clustered(n, D) if n else np.empty((0, D)), kind, **args)
    assert capfd.readouterr() == ("", "")


def test_min_vectors():
    assert [vi.min_vectors(k) for k in INDEX_KINDS] == [0, 0, 1, 39 * 256]
    with pytest.raises(IndexKindError):
        vi.min_vectors("lsh")
