"""Storage layout benchmark: SQLite page size for 3 KB vector blobs, and a raw file beside it.

    python bench/page_size.py --source LIB/vitdex.sqlite [--images 100000]

Copies the vectors (cls and mean, 768-d float32: 3072-byte blobs) of the first `--images`
contents of an existing library into fresh databases with the `vectors` table's schema, one per
page size, in WAL mode as vitdex opens them; reports file size, bytes per vector, the time to
read every vector in keyset pages (as `iter_pages` does) and to read 2000 random vectors by key.
The raw-file row is the lower bound: float32 rows in one file, no per-row overhead.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import common

SCHEMA = (
    "CREATE TABLE vectors (content_id INTEGER NOT NULL, spec_id INTEGER NOT NULL,"
    " feature VARCHAR NOT NULL, data BLOB NOT NULL, PRIMARY KEY (content_id, spec_id, feature))"
)
PAGE_SIZES = (4096, 8192, 16384, 65536)


def measure(path: Path, source: Path, images: int, page_size: int) -> dict:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={page_size}")  # before the first table: it then sticks
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SCHEMA)
    db.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
    t0 = time.perf_counter()
    with db:
        db.execute(
            "INSERT INTO vectors SELECT * FROM src.vectors WHERE content_id <= ?"
            " ORDER BY content_id, spec_id, feature",
            (images,),
        )
    write_s = time.perf_counter() - t0
    db.execute("DETACH DATABASE src")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    size = path.stat().st_size
    t0 = time.perf_counter()
    last, read = 0, 0
    while True:
        page = db.execute(
            "SELECT content_id, data FROM vectors WHERE feature = 'cls' AND content_id > ?"
            " ORDER BY content_id LIMIT 20000",
            (last,),
        ).fetchall()
        if not page:
            break
        read += len(page)
        last = page[-1][0]
    scan_s = time.perf_counter() - t0
    keys = random.Random(0).sample(range(1, images + 1), 2000)
    t0 = time.perf_counter()
    for key in keys:
        db.execute(
            "SELECT data FROM vectors WHERE content_id = ? AND feature = 'cls'", (key,)
        ).fetchone()
    point_ms = (time.perf_counter() - t0) / len(keys) * 1e3
    db.close()
    return {
        "layout": f"SQLite page_size {page_size}", "bytes": size, "rows": rows,
        "write_s": write_s, "scan_s": scan_s, "scanned": read, "point_ms": point_ms,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=common.OUT) as tmp:
        for page_size in PAGE_SIZES:
            path = Path(tmp) / f"p{page_size}.sqlite"
            results.append(measure(path, args.source, args.images, page_size))
            print(results[-1], flush=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    rows = results[0]["rows"]
    raw = rows * 768 * 4
    print(f"\n- Machine: {common.machine()}")
    print(f"- Command: `python bench/page_size.py --images {args.images}` ({rows:,} vectors)\n")
    print("| layout | file MB | bytes/vector | vs raw float32 | copy s | scan cls s |"
          " point read ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['layout']} | {r['bytes'] / 2**20:.0f} | {r['bytes'] / rows:.0f} |"
              f" {r['bytes'] / raw:.2f} | {r['write_s']:.1f} | {r['scan_s']:.1f} |"
              f" {r['point_ms']:.3f} |")  # fmt: skip
    print(f"| raw float32 file (lower bound) | {raw / 2**20:.0f} | 3072 | 1.00 | | | |")


if __name__ == "__main__":
    main()
