"""Ray engine benchmark: `ingest --engine ray` with 1 and 2 actors next to the local engine.

    python bench/ray_ingest.py [--medium 100] [--small 100] [--rounds 1] [--actors 1,2]

Data: generated realistic JPEGs (tests/photos.py), `--medium` at 1280x960 and `--small` at
640x480 (made once under bench/out/data). Model: the ViT-B/16 shape (random weights) saved like
google/vit-base-patch16-224 (bench/common.py). Each run ingests the folder into a fresh library
whose model was loaded before the clock starts (it binds the spec), so the local figure is the
ingest alone; a Ray figure includes starting its actors and loading the model in each, which is
what a user waits for. Ray itself is started once, before any clock, with every core of this
machine. Every round runs all engines back to back; the ratios to the local engine are per round,
then the median.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import common

log = logging.getLogger("bench.ray_ingest")


def ingest_rate(folder: Path, checkpoint: Path, actors: int | None) -> tuple[float, int]:
    """(images per second, images stored): the local engine when `actors` is None."""
    from vitdex.library import Library
    from vitdex.library.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory(prefix="lib-", dir=common.OUT) as tmp:
        library = Library.open(Path(tmp), create=True)
        library.embedder(str(checkpoint), device="cpu")  # binds the spec; the local model
        executor = None if actors is None else RayExecutor(library, actors=actors, device="cpu")
        start = time.perf_counter()
        report = library.ingest([folder], device="cpu", executor=executor)
        seconds = time.perf_counter() - start
        library.close()
    return report.added / seconds, report.added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medium", type=int, default=100, help="1280x960 photos")
    parser.add_argument("--small", type=int, default=100, help="640x480 photos")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--actors", default="1,2", help="actor pool sizes to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("vitdex", "transformers", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    common.quiet_transformers()

    import ray

    folder = common.photo_folder(
        f"ray-{args.medium}x1mp-{args.small}x03mp",
        [(args.medium, (1280, 960)), (args.small, (640, 480))],
    )
    total = args.medium + args.small
    checkpoint = common.vit_base_checkpoint()
    pools = [int(n) for n in args.actors.split(",") if n]
    log.info("machine: %s", common.machine())
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
    log.info("ray %s, cluster %s", ray.__version__, ray.cluster_resources())

    names = ["local"] + [f"ray, {n} actor{'s' if n > 1 else ''}" for n in pools]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name, actors in zip(names, [None, *pools], strict=True):
            rate, added = ingest_rate(folder, checkpoint, actors)
            assert added == total, f"{name}: stored {added} of {total}"
            rates[name].append(rate)
        local = rates["local"][-1]
        log.info(
            "round %d: %s", round_no + 1,
            ", ".join(f"{k} {v[-1]:.2f} img/s ({v[-1] / local:.2f}x)" for k, v in rates.items()),
        )  # fmt: skip
    ray.shutdown()

    print(f"\nmachine: {common.machine()}, ray {ray.__version__}")
    print(f"{total} JPEGs ({args.medium} at 1280x960, {args.small} at 640x480), ViT-B/16 shape,"
          f" CPU, {args.rounds} round(s) (median)\n")  # fmt: skip
    print("| engine | img/s | x local engine |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        ratio = statistics.median(v / lo for v, lo in zip(values, rates["local"], strict=True))
        print(f"| {name} | {statistics.median(values):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
