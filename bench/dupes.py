"""Near-duplicate graph benchmark: time, peak memory and found fraction at scale.

    python bench/dupes.py [--n 1000000] [--reference 100000] [--pairs-per-100k 1000] [--k 16]

Runs the two graphs `vitdex dupes` can use on a library's IVF-SQ8 index, on synthetic vectors
held in memory (the library reads them from its store instead), with the automatic threshold
(vitdex.library.dupes.auto_threshold), on one index of the auto kind:
- search: knn_graph + connected_components (vitdex.library.dupes.near_components), each vector
  a query against the index (what dupes did before, and still does for HNSW or IVF-PQ indexes);
- join: ivf_join (each list with its neighbouring lists, BLAS products of decoded codes) +
  judge_pairs on the exact vectors + connected_components (what dupes does on IVF-SQ8).
First at --reference vectors, then at --n, in one process, so the ratio of the two is measured
on the same machine state; then the exact alternative is timed on a sample of queries (flat kNN
over all n) and extrapolated.

Data: bench/search.py's synthetic 768-d embeddings (overlapping clusters, see its docstring).
Planted near duplicates: for a point x, a copy cos * x + sin * e (e a unit vector orthogonal to
x), cos uniform over the middle 80% of [threshold, 1]: the graph should find every one. Found:
the fraction of planted pairs whose two ends share a component. Other grouped: vectors in a
component that is not exactly one planted pair (pairs of the data itself above the threshold).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import faiss
import numpy as np
from search import make_vectors  # bench/search.py: the same synthetic embeddings

from vitdex.index.graph import SCORE_MARGIN, connected_components, ivf_join, judge_pairs
from vitdex.index.vector_index import VectorIndex
from vitdex.library.dupes import GRAPH_BATCH, auto_threshold, near_components

DIM = 768


def make_data(n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(vectors, planted (pairs, 2) row indices, threshold, median pair distance).

    The last `pairs` rows are copies of earlier rows, at a cosine uniform over the middle 80% of
    [threshold, 1], the threshold being the automatic one of the other rows.
    """
    x = make_vectors(n, seed)
    base = n - pairs
    rng = np.random.default_rng(seed)
    threshold, typical = auto_threshold(x[rng.choice(base, min(base, 1000), replace=False)])
    originals = rng.choice(base, pairs, replace=False)
    gap = 1.0 - threshold
    cos = rng.uniform(threshold + 0.1 * gap, 1.0 - 0.1 * gap, pairs).astype(np.float32)
    e = rng.standard_normal((pairs, DIM), dtype=np.float32)
    e -= (e * x[originals]).sum(1, keepdims=True) * x[originals]  # orthogonal to the original
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    x[base:] = cos[:, None] * x[originals] + np.sqrt(1 - cos**2)[:, None] * e
    return x, np.stack([originals, np.arange(base, n)], axis=1), threshold, typical


def peak_rss_gb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def run(n: int, pairs: int, k: int, seed: int) -> dict:
    x, planted, threshold, typical = make_data(n, pairs, seed)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = VectorIndex.build(ids, x, kind="auto")
    t_build = time.perf_counter() - t0
    print(f"  index built in {t_build:.1f}s: {index.kind} {index.params}", flush=True)
    step = max(1, n // 10)

    def progress(done: int, total: int) -> None:
        if done % step < GRAPH_BATCH or done == total:
            print(f"  graph {done:,}/{total:,} at {time.perf_counter() - t0:.0f}s", flush=True)

    t1 = time.perf_counter()
    labels = near_components(index, ids, x, threshold=threshold, k=k, progress=progress)
    t_search = time.perf_counter() - t1
    t1 = time.perf_counter()
    pairs = ivf_join(index, ids, k, threshold)
    src, dst, _ = judge_pairs(pairs, lambda wanted: (wanted, x[wanted]), DIM, threshold)
    joined = connected_components(src, dst, ids)
    t_join = time.perf_counter() - t1
    print(
        f"  search graph {t_search:.1f}s, list join {t_join:.1f}s"
        f" ({len(pairs):,} candidate pairs, margin {SCORE_MARGIN})",
        flush=True,
    )
    result = {
        "n": n, "pairs": len(planted), "kind": index.kind, "params": index.params,
        "threshold": threshold, "typical_distance": typical, "build_s": t_build,
        "peak_rss_gb": peak_rss_gb(),
        "search": graph_result(labels, planted, n) | {"graph_s": t_search},
        "join": graph_result(joined, planted, n) | {"graph_s": t_join},
        "same_components": bool(np.array_equal(labels, joined)),  # labels: first-seen order
    }  # fmt: skip
    if n >= 500_000:
        result["flat_extrapolated_s"] = flat_time(x, k, queries=1000) * n / 1000
    return result


def graph_result(labels: np.ndarray, planted: np.ndarray, n: int) -> dict:
    """Found: planted pairs in one component; other: grouped vectors not in a planted pair."""
    found = float(np.mean(labels[planted[:, 0]] == labels[planted[:, 1]]))
    partner = np.full(n, -1)
    partner[planted[:, 0]], partner[planted[:, 1]] = planted[:, 1], planted[:, 0]
    sizes = np.bincount(labels)
    grouped = np.flatnonzero(sizes[labels] > 1)
    # grouped vectors whose component is not exactly one planted pair (natural close pairs)
    other = int(
        np.sum(
            (sizes[labels[grouped]] != 2)
            | (partner[grouped] < 0)
            | (labels[np.maximum(partner[grouped], 0)] != labels[grouped])
        )
    )
    return {"found": found, "other_grouped": other, "groups": int(np.sum(sizes > 1))}


def flat_time(x: np.ndarray, k: int, queries: int) -> float:
    """Seconds for `queries` exact kNN queries against all of x (what a flat graph would cost)."""
    t0 = time.perf_counter()
    faiss.knn(x[:queries], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--pairs-per-100k", type=int, default=1000)
    parser.add_argument("--k", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads", flush=True)
    results = []
    for n in (args.reference, args.n):
        r = run(n, n * args.pairs_per_100k // 100_000, args.k, seed=n)
        results.append(r)
        print(
            f"n={r['n']:>9,}  {r['kind']} {r['params']}  threshold {r['threshold']:.4f}"
            f" (median pair distance {r['typical_distance']:.3f}), build {r['build_s']:.1f}s,"
            f" peak RSS {r['peak_rss_gb']:.2f} GB",
            flush=True,
        )
        for name in ("search", "join"):
            g = r[name]
            print(
                f"  {name:6} graph {g['graph_s']:.1f}s"
                f" ({g['graph_s'] / r['n'] * 1e6:.0f} us/vector), found {g['found']:.4f} of"
                f" {r['pairs']:,} planted pairs, {g['groups']:,} groups,"
                f" {g['other_grouped']} other grouped vectors",
                flush=True,
            )
        print(f"  same components from both graphs: {r['same_components']};"
              f" join/search time ratio {r['join']['graph_s'] / r['search']['graph_s']:.2f}",
              flush=True)  # fmt: skip
        if "flat_extrapolated_s" in r:
            flat = r["flat_extrapolated_s"]
            print(f"  exact flat kNN graph, extrapolated from 1000 queries: {flat:.0f}s",
                  flush=True)  # fmt: skip
    ref, big = results
    for name in ("search", "join"):
        print(
            f"ratio ({name}): {big['n'] / ref['n']:.0f}x the vectors took"
            f" {big[name]['graph_s'] / ref[name]['graph_s']:.1f}x the graph time",
            flush=True,
        )


if __name__ == "__main__":
    main()
