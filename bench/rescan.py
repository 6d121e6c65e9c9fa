"""Rescan benchmark: a second `ingest` of 10k unchanged files already in the library.

    python bench/rescan.py [--count 10000]

The first ingest (tiny model from tests/conftest.py, 64x48 JPEGs) fills the library; the timed
second one must find every file unchanged, open none and embed none. Reference, measured in the
same run: the bare walk (os.scandir + stat of every file), the floor any rescan pays. Goal: the
rescan takes at most 2 s. `--profile` prints the cProfile top of the rescan.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import tempfile
from pathlib import Path

import common

log = logging.getLogger("bench.rescan")


def bare_walk(folder: Path) -> int:
    """Every file's stat, nothing else."""
    count = 0
    stack = [str(folder)]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir():
                stack.append(entry.path)
            else:
                entry.stat()
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("vitdex").setLevel(logging.WARNING)

    from vitdex.library import Library

    folder = common.small_photo_folder(args.count)
    model = str(common.tiny_checkpoint())
    with tempfile.TemporaryDirectory(prefix="lib-", dir=common.OUT) as tmp:
        library = Library.open(Path(tmp), create=True)
        first_s, first = common.timed(library.ingest, [folder], model=model, device="cpu")
        assert first.added == args.count, first.to_dict()
        log.info("first ingest: %d added in %.1f s", first.added, first_s)
        walks, rescans = [], []
        for _ in range(args.rounds):
            walks.append(common.timed(bare_walk, folder)[0])
            seconds, report = common.timed(library.ingest, [folder], model=model, device="cpu")
            assert report.unchanged == args.count and report.added == 0, report.to_dict()
            rescans.append(seconds)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(library.ingest, [folder], model=model, device="cpu")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        library.close()

    walk, rescan = statistics.median(walks), statistics.median(rescans)
    ratio = statistics.median(r / w for r, w in zip(rescans, walks, strict=True))
    print(f"\nmachine: {common.machine()}")
    print(f"{args.count} unchanged 64x48 JPEGs, tiny model, {args.rounds} rounds (median)\n")
    print("| step | seconds | x bare walk |")
    print("|---|---|---|")
    print(f"| bare walk (reference) | {walk:.3f} | 1.00 |")
    print(f"| vitdex rescan (second ingest) | {rescan:.3f} | {ratio:.1f} |")
    print(f"| first ingest (for scale) | {first_s:.1f} | |")
    verdict = "met" if rescan <= 2.0 else "NOT met"
    print(f"\ngoal <= 2 s: {verdict} ({rescan:.2f} s; {args.count / rescan:,.0f} files/s)")


if __name__ == "__main__":
    main()
