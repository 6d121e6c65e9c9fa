"""On-disk IVF build benchmark: an IVF-SQ8 index built from vectors streamed off disk.

    python bench/ondisk.py [--sizes 300000,1000000] [--memory-mb 1024] [--queries 500]

Data: bench/search.py's synthetic 768-d vectors (clustered, overlapping), generated 100k at a
time into a raw float32 file under bench/out/ondisk/ (made once, reused), never all in memory.
Each size runs in a fresh process: vitdex.index.ondisk.build_ivf_on_disk reads the file in pages
(os.pread into a page buffer: page cache, not the process's memory), trains on its sample rows,
adds in shards and merges; the index is saved as vitdex saves it and loaded memory-mapped.
Reported: build time, peak RSS of the build (ru_maxrss, before any search), bytes per vector of
the index file, p50/p99 of one query per call through VectorIndex.search, and recall@10 on the
held-out queries against exact search streamed over the same file in pages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np
from search import DIM, K, latency_ms, make_vectors

log = logging.getLogger("bench.ondisk")
CHUNK = 100_000
PAGE = 20_000


def data_file(n: int) -> Path:
    """n vectors in a raw float32 file, generated chunk by chunk (made once)."""
    folder = common.OUT / "ondisk"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vectors-{n}.f32"
    if path.exists() and path.stat().st_size == n * DIM * 4:
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for number, start in enumerate(range(0, n, CHUNK)):
            f.write(make_vectors(min(CHUNK, n - start), seed=n * 1000 + number).tobytes())
    tmp.replace(path)
    return path


def read_rows(fd: int, start: int, count: int) -> np.ndarray:
    raw = os.pread(fd, count * DIM * 4, start * DIM * 4)
    return np.frombuffer(raw, np.float32).reshape(count, DIM)


def child(n: int, memory: int, nq: int) -> dict:
    import faiss

    from vitdex.index import VectorIndex
    from vitdex.index.ondisk import PagedVectors, build_ivf_on_disk

    path = data_file(n)
    fd = os.open(path, os.O_RDONLY)

    def pages():
        for start in range(0, n, PAGE):
            count = min(PAGE, n - start)
            yield np.arange(start, start + count, dtype=np.int64), read_rows(fd, start, count)

    def rows(positions: np.ndarray):
        out = np.empty((len(positions), DIM), np.float32)
        for i, p in enumerate(positions.tolist()):
            out[i] = read_rows(fd, p, 1)[0]
        return positions.astype(np.int64), out

    work = common.OUT / "ondisk" / f"work-{n}"
    t0 = time.perf_counter()
    index = build_ivf_on_disk(
        PagedVectors(n, DIM, pages, rows), "ivfsq8", work, memory=memory, page=PAGE
    )
    index_file = common.OUT / "ondisk" / f"index-{n}.faiss"
    index.save(index_file)
    build_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = dict(index.params)
    del index
    loaded = VectorIndex.load(index_file, mmap=True)
    queries = make_vectors(nq, seed=n + 1)
    loaded.search(queries[:5], K)  # warm the mapping's first pages
    p50, p99 = latency_ms(loaded, queries, nq)
    heap = faiss.ResultHeap(nq, K, keep_max=True)
    for ids, x in pages():
        d, i = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, ids[i])
    heap.finalize()
    _, found = loaded.search(queries, K)
    hits = sum(len(np.intersect1d(g, f)) for g, f in zip(heap.I, found, strict=True))
    size = index_file.stat().st_size
    index_file.unlink()
    index_file.with_name(index_file.name + ".json").unlink()
    return {
        "n": n, "build_s": build_s, "peak_rss_mb": peak_mb, "bytes_per_vector": size / n,
        "index_mb": size / 2**20, "p50_ms": p50, "p99_ms": p99, "recall": hits / (nq * K),
        "params": params, "memory_mb": memory >> 20,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300000,1000000")
    parser.add_argument("--memory-mb", type=int, default=1024, help="build memory budget")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        print(json.dumps(child(args.child, args.memory_mb << 20, args.queries)))
        return
    command = "python bench/ondisk.py " + " ".join(sys.argv[1:])
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        data_file(n)
        log.info("n=%d: data ready in %.0fs", n, time.perf_counter() - t0)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--memory-mb", str(args.memory_mb),
             "--queries", str(args.queries)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        log.info("%s", rows[-1])
    lines = [
        f"- Machine: {common.machine()}",
        f"- Date: {dt.date.today().isoformat()}; command: `{command}`",
        "",
        "| n | build s | peak RSS MB (build) | index MB | bytes/vector | nlist | nprobe (auto) "
        "| p50 ms | p99 ms | recall@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['build_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['index_mb']:.0f} "
            f"| {r['bytes_per_vector']:.0f} | {r['params']['nlist']} | {r['params']['nprobe']} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall']:.3f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
