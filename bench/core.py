"""Core benchmark: the user's commands on a library of N images, process start included.

    python bench/core.py [--images 1000000] [--folder DIR] [--label NAME] [--runs 5]

The library is built cheaply by `populate`: rows written through the Store (vitdex.storage) in
large batches, one transaction each (no model runs), N images with 768-d vectors for both
features (cls and mean) drawn from bench/search.py's clustered, overlapping distribution. 50 of
them are real small JPEGs under DIR/photos (rows carry their true size, mtime, device, inode and
sha256), so an ingest of that folder finds 50 unchanged files; the others point at paths under
DIR/missing that do not exist. The spec names a fake model: no command measured here loads one.
A finished build leaves DIR/.complete and is reused by later runs (building 1M takes minutes).

Each command runs as `vitdex ...` from this venv in a fresh child process, timed from spawn to
exit with time.perf_counter; its peak RSS is ru_maxrss from os.wait4, both taken by a small
launcher process (see LAUNCHER). The index files are removed before measuring, so every run starts
from the library as populate leaves it; page caches stay warm (nothing is dropped). The table goes
to stdout and bench/out/core-<label>.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import OUT, ROOT, machine
from search import DIM, make_vectors

REAL = 50  # real JPEG files in the library: the ingest and search targets
BATCH = 20_000  # rows per transaction while populating
MODEL_ID = "bench/fake-vit-768"  # no measured command loads the model
CLS_SEED, MEAN_SEED = 1_000_000, 2_000_000  # + batch number: distinct samples per batch


@dataclass(frozen=True)
class Built:
    """What populate made: where, how many and how long it took."""

    library: Path
    photos: Path
    images: int
    seconds: float


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    stdout: str


def real_photos(folder: Path, count: int = REAL) -> list[Path]:
    """`count` small distinct JPEGs (160x120), made once."""
    from tests.photos import make_photo

    paths = [folder / f"real{i:03d}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.exists():
            make_photo(path, size=(160, 120), seed=500_000 + i, quality=85)
    return paths


def populate(library_folder: Path, n: int, *, photos: Path, missing: Path) -> None:
    """A new library of n images: REAL files from `photos`, the rest at paths under `missing`.

    The only function that knows how rows are stored: it writes through the Store, one
    transaction per BATCH images, as an ingest's commit stage does.
    """
    from vitdex.embedder import EmbeddingSpec
    from vitdex.storage import FileIdentity, NewContent, Store

    spec = EmbeddingSpec(
        model_id=MODEL_ID,
        revision="bench",
        preprocessing={"size": [224, 224], "mean": [0.5] * 3, "std": [0.5] * 3, "resample": 2},
        features=("cls", "mean"),
        dim=DIM,
    )
    reals = [p.absolute() for p in real_photos(photos)]
    if n < len(reals):
        raise SystemExit(f"--images must be at least {len(reals)}")
    now = datetime.now(UTC)
    store = Store(library_folder, create=True)
    try:
        stored_spec = store.bind_spec(spec.key, MODEL_ID, "bench", DIM, spec.to_dict())
        for batch_no, start in enumerate(range(0, n, BATCH)):
            stop = min(start + BATCH, n)
            cls = make_vectors(stop - start, seed=CLS_SEED + batch_no)
            mean = make_vectors(stop - start, seed=MEAN_SEED + batch_no)
            contents, files = [], []
            for i in range(start, stop):
                if i < len(reals):
                    path = reals[i]
                    st = path.stat()
                    sha = hashlib.sha256(path.read_bytes()).hexdigest()
                    file = FileIdentity.of(str(path), st)
                    width, height = 160, 120
                else:
                    path = missing / f"d{i // 1000:04d}" / f"img{i:07d}.jpg"
                    sha = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
                    file = FileIdentity(str(path), 0, 0, 100_000 + i % 997, 0)
                    width, height = 1600, 1200
                contents.append(NewContent(sha, width, height, "JPEG", None, None, None))
                files.append(file)
            with store.transaction():
                generation = store.bump_generation()
                ids = store.images.add_contents(contents)
                content_ids = [ids[c.sha256] for c in contents]
                store.vectors.add(stored_spec, [
                    (cid, {"cls": cls[k], "mean": mean[k]}) for k, cid in enumerate(content_ids)
                ])  # fmt: skip
                store.images.add(list(zip(files, content_ids, strict=True)), generation, now)
            print(f"  populate: {stop:,}/{n:,}", file=sys.stderr, flush=True)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()


def remove_indexes(library_folder: Path) -> None:
    """Back to the library as populate left it: no index files (today's layout: index/)."""
    shutil.rmtree(library_folder / "index", ignore_errors=True)


def build(folder: Path, n: int) -> Built:
    """The library under `folder`, populated once; a finished build is reused."""
    marker = folder / ".complete"
    library, photos = folder / "lib", folder / "photos"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done["images"] != n:
            raise SystemExit(
                f"{folder} holds {done['images']} images, not {n}; use another --folder"
            )
        return Built(library, photos, n, done["seconds"])
    if library.exists():
        raise SystemExit(f"{library} exists but was not finished: remove it and run again")
    start = time.perf_counter()
    populate(library, n, photos=photos, missing=folder / "missing")
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"images": n, "seconds": seconds}))
    return Built(library, photos, n, seconds)


def vitdex(*args: str) -> list[str]:
    """The CLI of the venv running this script."""
    script = Path(sys.executable).parent / "vitdex"
    return [str(script if script.exists() else shutil.which("vitdex") or "vitdex"), *args]


# Spawns the command from a small fresh process and reports its wall time and peak RSS. A child
# forked from this process would report this process's RSS as its floor: Linux keeps the peak of
# the memory a process had before exec.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run(command: list[str], log: Path) -> Run:
    """One child process: wall seconds from spawn to exit, peak RSS, stdout; fails loudly."""
    measured = log.with_suffix(".rusage")
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, str(measured), *command],
            stdout=out,
            stderr=err,
            check=True,
        )
    seconds, maxrss_kib, returncode = measured.read_text().split()
    if int(returncode):
        tail = log.with_suffix(".err").read_text()[-2000:]
        raise SystemExit(f"{' '.join(command)} exited {returncode}:\n{tail}")
    return Run(float(seconds), int(maxrss_kib) / 1024, log.read_text())


@dataclass(frozen=True)
class Row:
    command: str
    runs: list[Run]


def measure(built: Built, runs: int, logs: Path) -> list[Row]:
    lib = str(built.library)
    image = str((built.photos / "real007.jpg").absolute())
    folder = str(built.photos.absolute())
    rows: list[Row] = []

    def timed(name: str, args: list[str], times: int, check) -> None:
        done = []
        for i in range(times):
            result = run(vitdex(*args), logs / f"{len(rows):02d}-{i}.out")
            if message := check(result.stdout):
                raise SystemExit(f"{name}: {message}; output:\n{result.stdout[-2000:]}")
            done.append(result)
            print(f"  {name}: {result.seconds:.2f} s, {result.rss_mb:.0f} MB", file=sys.stderr)
        rows.append(Row(name, done))

    def has_results(out: str) -> str | None:
        return None if out.strip() and "no results" not in out else "no results"

    def unchanged(out: str) -> str | None:
        return None if f"{REAL} unchanged" in out else f"expected '{REAL} unchanged'"

    remove_indexes(built.library)
    timed(
        "`vitdex index rebuild --feature cls` (builds the cls index; not part of search)",
        ["index", "rebuild", "--feature", "cls", "--library", lib],
        1,
        lambda _: None,
    )
    timed(
        "`vitdex search IMAGE` (in the library, cls index built)",
        ["search", image, "--library", lib],
        runs,
        has_results,
    )
    timed(
        f"`vitdex ingest FOLDER` ({REAL} unchanged files)",
        ["ingest", folder, "--library", lib],
        max(1, runs - 2),
        unchanged,
    )
    timed(
        "first `vitdex search IMAGE --feature mean` (no mean index yet)",
        ["search", image, "--feature", "mean", "--library", lib],
        1,
        has_results,
    )
    timed("`vitdex status`", ["status", "--library", lib], runs, lambda _: None)
    return rows


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain").strip() else "")


def database_bytes(library: Path) -> int:
    return sum(p.stat().st_size for p in library.glob("vitdex.sqlite*"))


def report(built: Built, rows: list[Row], label: str) -> str:
    lines = [
        f"# core bench: {label}",
        "",
        f"- Machine: {machine()}",
        f"- Commit measured: {git_commit()}",
        f"- Library: {built.images:,} images, 768-d cls and mean vectors; database"
        f" {database_bytes(built.library) / 1e9:.2f} GB; populate took {built.seconds:.0f} s"
        f" ({built.library})",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Each command is a fresh `vitdex`"
        " process; wall time from spawn to exit; peak RSS from wait4 (max over runs).",
        "",
        "| command | runs | seconds (median) | seconds (max) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        seconds = [r.seconds for r in row.runs]
        lines.append(
            f"| {row.command} | {len(seconds)} | {statistics.median(seconds):.2f}"
            f" | {max(seconds):.2f} | {max(r.rss_mb for r in row.runs):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, help="where the library is built (and reused)")
    parser.add_argument("--label", default="today", help="names bench/out/core-<label>.md")
    parser.add_argument("--runs", type=int, default=5, help="runs of each cheap command")
    args = parser.parse_args()

    folder = (args.folder or OUT / f"core-{args.images}").absolute()
    built = build(folder, args.images)
    logs = OUT / f"core-{args.label}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = measure(built, args.runs, logs)
    text = report(built, rows, args.label)
    out = OUT / f"core-{args.label}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
