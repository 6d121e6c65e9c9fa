"""Export benchmark: `vitdex export` of an N-image library in both formats, against a reference.

    python bench/export.py [--images 50000 200000] [--folder DIR] [--label NAME]

Each library is built (once, then reused) by bench/core.py's `build`: rows written through the
Store, 768-d cls and mean vectors. For each size, three fresh processes, each timed from spawn to
exit with its peak RSS from wait4 (core.py's `run`):

- reference: read every vector of both features through the store (`store.vectors.of_images`,
  the read an index build does) and `np.save` each whole array: the simplest export there is,
  which holds a feature's N vectors in memory at once;
- `vitdex export OUT` (parquet, one file) and `vitdex export OUT --format npy` (shards).

Every output is checked (row count, and its first and last vectors equal the stored ones) and
removed before the next run. The table goes to stdout and bench/out/export-<label>.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import OUT, machine
from core import build, git_commit, run, vitdex

# The reference: whole arrays through the store, then numpy's own writer.
REFERENCE = """
import sys
import numpy as np
from vitdex.library import Library
library = Library.open(sys.argv[1])
spec = library.require_spec()
for feature in ("cls", "mean"):
    ids, vectors = library.store.vectors.of_images(spec, feature)
    np.save(f"{sys.argv[2]}/{feature}.npy", vectors)
    del ids, vectors
"""


@dataclass(frozen=True)
class Row:
    images: int
    what: str
    seconds: float
    rss_mb: float
    out_mb: float


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def stored_ends(library: Path) -> dict[str, np.ndarray]:
    """The first and last stored vector of each feature, in id order."""
    from vitdex.library import Library

    with Library.open(library) as lib:
        spec = lib.require_spec()
        ids = lib.store.images.ids()
        # by id: no need to read them all (returned in id order: first, then last)
        return {f: lib.store.vectors.of_image_ids(spec, f, [ids[0], ids[-1]])[1][[0, -1]]
                for f in ("cls", "mean")}  # fmt: skip


def check(out: Path, kind: str, n: int, expected: dict[str, np.ndarray]) -> None:
    """The output holds n rows and the stored first and last vectors: fails loudly if not."""
    import pyarrow.parquet as pq

    for feature, ends in expected.items():
        if kind == "parquet":
            file = pq.ParquetFile(out)
            rows = file.metadata.num_rows
            first = file.read_row_group(0, columns=[feature]).column(feature)
            last = file.read_row_group(file.num_row_groups - 1, columns=[feature]).column(feature)
            got = np.stack([first[0].values.to_numpy(), last[-1].values.to_numpy()])
        elif kind == "npy":
            shards = [np.load(p, mmap_mode="r") for p in sorted((out / feature).iterdir())]
            rows = sum(len(s) for s in shards)
            got = np.stack([shards[0][0], shards[-1][-1]])
        else:
            whole = np.load(out / f"{feature}.npy", mmap_mode="r")
            rows, got = len(whole), np.stack([whole[0], whole[-1]])
        if rows != n or not np.array_equal(got, ends):
            raise SystemExit(f"{kind} export of {n} images: {rows} rows, vectors equal: "
                             f"{np.array_equal(got, ends)}")  # fmt: skip


def measure(n: int, folder: Path, logs: Path) -> list[Row]:
    built = build(folder.absolute(), n)
    lib = str(built.library)
    expected = stored_ends(built.library)
    work = OUT / "export-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    commands = {
        "reference: of_images + np.save (cls, mean)": (
            "reference", work / "reference", [sys.executable, "-c", REFERENCE, lib]
        ),
        "`vitdex export OUT` (parquet)": (
            "parquet", work / "out.parquet", vitdex("export", "--library", lib)
        ),
        "`vitdex export OUT --format npy`": (
            "npy", work / "out-npy", vitdex("export", "--format", "npy", "--library", lib)
        ),
    }  # fmt: skip
    rows = []
    for what, (kind, out, command) in commands.items():
        if kind == "reference":
            out.mkdir()
        result = run([*command, str(out)], logs / f"{n}-{kind}.out")
        check(out, kind, n, expected)
        rows.append(Row(n, what, result.seconds, result.rss_mb, size_mb(out)))
        print(f"  {n:,} {kind}: {result.seconds:.1f} s, {result.rss_mb:.0f} MB", file=sys.stderr)
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    return rows


def report(rows: list[Row], label: str) -> str:
    lines = [
        f"# export bench: {label}",
        "",
        f"- Machine: {machine()}",
        f"- Commit measured: {git_commit()}",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Libraries of 768-d cls and mean vectors"
        " built by bench/core.py's populate. Each line is a fresh process; wall time from spawn"
        " to exit; peak RSS from wait4.",
        "",
        "| images | command | seconds | images/s | peak RSS (MB) | output (MB) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.images:,} | {r.what} | {r.seconds:.1f} | {r.images / r.seconds:,.0f}"
            f" | {r.rss_mb:.0f} | {r.out_mb:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument(
        "--folder", type=Path, help="a library built by bench/core.py (one size only; reused)"
    )
    parser.add_argument("--label", default="today", help="names bench/out/export-<label>.md")
    args = parser.parse_args()
    if args.folder and len(args.images) != 1:
        parser.error("--folder takes one --images size")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logs = OUT / f"export-{args.label}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = [row for n in args.images for row in measure(n, args.folder or OUT / f"core-{n}", logs)]
    text = report(rows, args.label)
    (OUT / f"export-{args.label}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
