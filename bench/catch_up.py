"""Index catch-up benchmark: a behind IVF file brought up to date, in memory and on disk.

    python bench/catch_up.py --library DIR [--feature cls] [--forget d0999]

DIR is a library of bench/core.py (its images outside the 50 real photos sit under
DIR/../missing/dNNNN/, 1000 per folder). Setup, once: the feature's current index file (and its
sidecar) is copied to bench/out/catch-up/, then `vitdex forget` of the folder `--forget` moves
the library on (1000 removals; the writer saves a caught-up file of its own, which is left alone).
Then, each in a fresh process, the copied file is caught up with the changes since its generation:
- memory (the reference, what vitdex did before): load the file whole, remove and add, save;
- disk: load it memory-mapped, `catch_up_on_disk` (a new file written list by list), save.
Reported: seconds and peak RSS (ru_maxrss) of each, and their ratios; the two results must hold
the same ids. `--cold` empties the OS page cache before each (Linux, root: a cold file maps more
pages per fault, so the RSS of a mapped pass is highest then).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import OUT, machine

from vitdex.index import VectorIndex, read_sidecar
from vitdex.index.ondisk import catch_up_on_disk
from vitdex.library import Library

HERE = OUT / "catch-up"


def behind_file(feature: str) -> Path:
    return HERE / f"{feature}.faiss"


def setup(library: Path, feature: str, forget: str) -> None:
    """Copy the current index file aside, then forget a folder's images (once)."""
    if behind_file(feature).exists():
        return
    HERE.mkdir(parents=True, exist_ok=True)
    with Library.open(library) as lib:
        lib.index(feature)  # current, saved
        [file] = lib.indexes.files(feature)
        shutil.copyfile(file.path, behind_file(feature))
        shutil.copyfile(f"{file.path}.json", f"{behind_file(feature)}.json")
        gone = lib.forget([library.parent / "missing" / forget])
        print(f"setup: forgot {gone} images; the copied file is at generation {file.generation}")


def child(library: Path, feature: str, mode: str) -> dict:
    path = behind_file(feature)
    generation = read_sidecar(path)["meta"]["generation"]
    with Library.open(library) as lib:
        spec = lib.require_spec()
        t0 = time.perf_counter()
        changes = lib.store.vectors.changes_since(spec, feature, generation)
        stale = np.union1d(changes.removed, changes.ids)
        with tempfile.TemporaryDirectory(dir=HERE) as work:
            if mode == "memory":
                index = VectorIndex.load(path, mmap=False)
                index.remove(stale)
                index.add(changes.ids, changes.vectors)
            else:
                index = catch_up_on_disk(VectorIndex.load(path, mmap=True), stale, changes.ids,
                                         changes.vectors, work)  # fmt: skip
            index.save(Path(work) / "out.faiss")
            seconds = time.perf_counter() - t0
            ids = np.sort(index.ids())
    return {
        "mode": mode, "seconds": seconds, "peak_mb": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024, "ntotal": int(len(ids)),
        "id_sum": int(ids.sum()), "removed": int(len(changes.removed)),
        "added": int(len(changes.ids)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--feature", default="cls")
    parser.add_argument("--forget", default="d0999")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each")
    parser.add_argument("--child", choices=["memory", "disk"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.library, args.feature, args.child)))
        return
    setup(args.library, args.feature, args.forget)
    runs = {}
    for mode in ("memory", "disk"):
        if args.cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out = subprocess.run(
            [sys.executable, __file__, "--library", str(args.library), "--feature",
             args.feature, "--child", mode],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    memory, disk = runs["memory"], runs["disk"]
    assert (memory["ntotal"], memory["id_sum"]) == (disk["ntotal"], disk["id_sum"])
    print(f"- Machine: {machine()}; command: `python bench/catch_up.py {' '.join(sys.argv[1:])}`")
    print(f"- {memory['ntotal']:,} vectors after {memory['removed']} removals and"
          f" {memory['added']} additions\n")  # fmt: skip
    print("| catch-up | s | peak RSS MB |\n|---|---:|---:|")
    for run in (memory, disk):
        print(f"| {run['mode']} | {run['seconds']:.1f} | {run['peak_mb']:.0f} |")
    print(
        f"\nratio disk/memory: time {disk['seconds'] / memory['seconds']:.2f},"
        f" peak RSS {disk['peak_mb'] / memory['peak_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
