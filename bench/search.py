"""Search benchmark: build time, size, single-query latency and recall@10 of each index kind.

    python bench/search.py [--sizes 100000,1000000] [--queries 500] [--out bench/out/search.md]

Data: synthetic 768-d vectors shaped like image embeddings, with overlapping clusters: 50 "super"
directions, 1000 cluster centres = a super direction + an offset of norm 0.7, each point = its
centre + a spread of norm 1 in a 16-d subspace shared by the super cluster + isotropic noise of norm
0.2, L2-normalised. Neighbours cross cluster borders, so IVF needs several probes (recall@10 with
nprobe=1 is ~0.77 at 100k). Queries are held-out points of the same distribution; ground truth is
exact inner-product search (faiss.knn).
Latency is one query per call through VectorIndex.search (the API path), time.perf_counter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vitdex.index import VectorIndex, choose_kind
from vitdex.index.vector_index import FLAT_MAX_N

log = logging.getLogger("bench.search")

DIM = 768
K = 10
SUPER = 50
CENTRES = 1000
RANK = 16
OFFSET = 0.7  # norm of a centre's offset from its super direction
SPREAD = 1.0  # norm of the within-cluster spread (same order as the distance between centres)
NOISE = 0.2  # norm of the isotropic part
HNSW_MAX_N = 300_000  # HNSW at 1M x 768 takes too long to build on 2 cores (and > 3 KB/vector)
FLAT_LARGE_N = 500_000  # from here, time only FLAT_LARGE_QUERIES flat queries (~0.4 s each at 1M)
FLAT_LARGE_QUERIES = 50
NPROBES = (8, 16, 32, 64)


def make_vectors(n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """n normalised vectors of the benchmark distribution, generated chunk by chunk."""
    rng = np.random.default_rng(1234)  # the distribution itself is fixed...
    sup = rng.standard_normal((SUPER, DIM), dtype=np.float32)
    sup /= np.linalg.norm(sup, axis=1, keepdims=True)
    super_of = rng.integers(0, SUPER, CENTRES)
    offsets = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    offsets *= OFFSET / np.linalg.norm(offsets, axis=1, keepdims=True)
    centres = sup[super_of] + offsets
    scale = np.float32(SPREAD / np.sqrt(DIM * RANK))
    bases = rng.standard_normal((SUPER, RANK, DIM), dtype=np.float32) * scale
    rng = np.random.default_rng(seed)  # ...the sample depends on the seed
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, CENTRES, m)
        x = centres[which]
        x += rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(NOISE / np.sqrt(DIM))
        z = rng.standard_normal((m, RANK), dtype=np.float32)
        group = super_of[which]
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(SUPER + 1))
        for c in range(SUPER):
            rows = order[bounds[c] : bounds[c + 1]]
            x[rows] += z[rows] @ bases[c]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def latency_ms(index: VectorIndex, queries: np.ndarray, count: int) -> tuple[float, float]:
    """p50 and p99 of one query per call, in milliseconds."""
    times = []
    for q in queries[:count]:
        one = q[None, :]
        t0 = time.perf_counter()
        index.search(one, K)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(index: VectorIndex, queries: np.ndarray, gt: np.ndarray) -> float:
    _, found = index.search(queries, K)
    return float(np.mean([len(np.intersect1d(g, f)) / K for g, f in zip(gt, found, strict=True)]))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def bench_size(n: int, nq: int) -> list[dict]:
    import faiss

    t0 = time.perf_counter()
    base = make_vectors(n, seed=n)
    queries = make_vectors(nq, seed=n + 1)
    ids = np.arange(n, dtype=np.int64)
    _, gt = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    log.info("n=%d: data + ground truth in %.1fs", n, time.perf_counter() - t0)
    rows: list[dict] = []

    def row(kind: str, index: VectorIndex, build_s: float, setting: str, count: int,
            note: str = "") -> None:
        p50, p99 = latency_ms(index, queries, count)
        rows.append({
            "n": n, "kind": kind, "setting": setting, "build_s": build_s,
            "bytes_per_vector": size / n, "p50_ms": p50, "p99_ms": p99,
            "recall": recall(index, queries[:count] if kind == "flat" else queries,
                             gt[:count] if kind == "flat" else gt),
            "queries": count, "note": note,
        })
        log.info("%s", rows[-1])

    # flat
    t0 = time.perf_counter()
    index = VectorIndex.build(ids, base, "flat")
    build_s = time.perf_counter() - t0
    size = index.nbytes
    row("flat", index, build_s, "exact", FLAT_LARGE_QUERIES if n >= FLAT_LARGE_N else nq)
    del index
    gc.collect()

    # hnsw
    if n <= HNSW_MAX_N:
        t0 = time.perf_counter()
        index = VectorIndex.build(ids, base, "hnsw", M=32)
        build_s = time.perf_counter() - t0
        size = index.nbytes
        calibrated = index.params["efSearch"]
        for ef in sorted({calibrated, 64, 128}):
            index.set_search_params(efSearch=ef)
            row("hnsw", index, build_s, f"M=32 efSearch={ef}" + (" (auto)" if ef == calibrated
                                                                else ""), nq)
        del index
        gc.collect()

    # ivfsq8 and ivfpq (ivfpq reuses ivfsq8's coarse centroids: its build time excludes k-means)
    centroids = None
    for kind in ("ivfsq8", "ivfpq"):
        t0 = time.perf_counter()
        index = VectorIndex.build(ids, base, kind, centroids=centroids)
        build_s = time.perf_counter() - t0
        size = index.nbytes
        calibrated, nlist = index.params["nprobe"], index.params["nlist"]
        centroids = index.centroids
        note = "coarse centroids reused from ivfsq8" if kind == "ivfpq" else ""
        for nprobe in sorted({calibrated, *NPROBES}):
            index.set_search_params(nprobe=nprobe)
            tag = f"nlist={nlist} nprobe={nprobe}" + (" (auto)" if nprobe == calibrated else "")
            if kind == "ivfpq":
                tag += f" m={index.params['m']}"
            row(kind, index, build_s, tag, nq, note)
        del index
        gc.collect()
    if n > HNSW_MAX_N:
        note = f"not built above {HNSW_MAX_N:,}: slow to build on 2 cores, > 3 KB/vector"
        rows.append({"n": n, "kind": "hnsw", "setting": "skipped", "note": note})
    del base
    gc.collect()
    return rows


def to_markdown(rows: list[dict], command: str, elapsed: float) -> str:
    lines = [
        f"- Machine: {cpu_model()}, 2 cores; Python {platform.python_version()}, "
        f"faiss {__import__('faiss').__version__}, numpy {np.__version__}",
        f"- Date: {dt.date.today().isoformat()}; total run {elapsed / 60:.1f} min",
        f"- Command: `{command}`",
        f"- choose_kind: flat up to {FLAT_MAX_N:,} vectors, then {choose_kind(FLAT_MAX_N + 1)}",
        "",
        "| n | kind | setting | build s | bytes/vector | p50 ms | p99 ms | p50 / flat p50 "
        "| recall@10 | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    flat_p50 = {r["n"]: r["p50_ms"] for r in rows if r["kind"] == "flat"}
    for r in rows:
        if "p50_ms" not in r:
            lines.append(f"| {r['n']:,} | {r['kind']} | {r['setting']} | | | | | | | {r['note']} |")
            continue
        lines.append(
            f"| {r['n']:,} | {r['kind']} | {r['setting']} | {r['build_s']:.1f} "
            f"| {r['bytes_per_vector']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['p50_ms'] / flat_p50[r['n']]:.3f} | {r['recall']:.3f} "
            f"| {r['note'] or (str(r['queries']) + ' queries' if r['kind'] == 'flat' else '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated index sizes")
    parser.add_argument("--queries", type=int, default=500, help="queries per measurement")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = "python bench/search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench_size(n, args.queries)
    text = to_markdown(rows, command.strip(), time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
