"""Memory benchmark: peak RSS of an ingest of 1k and of 10k images, each in a fresh process.

    python bench/memory.py [--counts 1000,10000]

Each child opens a fresh library, loads the tiny model (tests/conftest.py), records its RSS (the
reference: interpreter + torch + model, before any image), ingests the first N of the 64x48 JPEGs
and reports ru_maxrss. Goal: the peak grows by less than 10% from 1k to 10k images, i.e. ingest
memory does not grow with the number of files.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(count: int, per_folder: int) -> None:
    from vitdex.library import Library

    folder = common.small_photo_folder()
    roots = [folder / f"d{i:02d}" for i in range(count // per_folder)]
    with tempfile.TemporaryDirectory(prefix="lib-", dir=common.OUT) as tmp:
        library = Library.open(Path(tmp), create=True)
        library.embedder(str(common.tiny_checkpoint()), device="cpu")
        baseline = _rss_mib()
        report = library.ingest(roots, device="cpu")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        library.close()
    print(json.dumps({"count": count, "added": report.added, "baseline_mib": baseline,
                      "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, 1000)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.small_photo_folder()  # made once, before any child is timed
    common.tiny_checkpoint()
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(count)],
            capture_output=True, text=True, check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        logging.info("%s", rows[-1])
    first = rows[0]
    print(f"\nmachine: {common.machine()}")
    print("64x48 JPEGs, tiny model, one fresh process per count\n")
    print("| images | RSS after model load (reference), MiB | peak RSS, MiB | peak / reference |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['count']} | {row['baseline_mib']:.0f} | {row['peak_mib']:.0f} | "
              f"{row['peak_mib'] / row['baseline_mib']:.2f} |")
    growth = rows[-1]["peak_mib"] / first["peak_mib"] - 1
    verdict = "met" if growth < 0.10 else "NOT met"
    print(f"\npeak growth {first['count']} -> {rows[-1]['count']}: {growth:+.1%} "
          f"(goal < 10%: {verdict})")


if __name__ == "__main__":
    main()
