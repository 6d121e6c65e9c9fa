"""Ingest benchmark: vitdex end to end against a plain transformers loop, and the model ceiling.

    python bench/ingest.py [--big 40] [--small 40] [--batch 16] [--rounds 2] [--runtimes fp32,int8]
                           [--device cpu] [--profile]

Data: generated realistic JPEGs, `--big` at 4000x3000 and `--small` at 1920x1080 (made once under
bench/out/data). Model: the ViT-B/16 shape (ViTConfig defaults, random weights) saved like
google/vit-base-patch16-224 (224, bilinear, mean/std 0.5).

- reference: PIL open + AutoImageProcessor + ViTModel, same batch size, serial, torch default
  threads;
- model only: ViTModel on ready tensors (the ceiling for end to end at fp32);
- vitdex: `Library.ingest` into a fresh library (walk, decode, preprocess, model, SQLite, FAISS);
  the model is loaded before the clock starts, as the reference's is.

Every round measures all of them back to back, so the ratios hold on a shared, noisy machine; the
table shows the median round.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import logging
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np

log = logging.getLogger("bench.ingest")


def list_photos(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def reference(paths: list[Path], checkpoint: Path, batch: int, device: str, threads: int) -> float:
    """The obvious transformers loop: images per second."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, ViTModel

    torch.set_num_threads(threads)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = ViTModel.from_pretrained(checkpoint, add_pooling_layer=False).eval().to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + batch]]
            pixels = processor(images, return_tensors="pt")["pixel_values"].to(device)
            model(pixel_values=pixels).last_hidden_state[:, 0].cpu()
    return len(paths) / (time.perf_counter() - start)


def model_only(checkpoint: Path, n: int, batch: int, device: str, threads: int) -> float:
    """ViTModel on ready float32 tensors: images per second."""
    import torch
    from transformers import ViTModel

    torch.set_num_threads(threads)
    model = ViTModel.from_pretrained(checkpoint, add_pooling_layer=False).eval().to(device)
    pixels = torch.randn(batch, 3, 224, 224, device=device)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda"))
    with torch.inference_mode(), autocast:
        model(pixel_values=pixels)  # warm-up
        _sync(device)
        start = time.perf_counter()
        done = 0
        while done < n or time.perf_counter() - start < 2.0:
            model(pixel_values=pixels).last_hidden_state[:, 0].cpu()  # .cpu() waits for the GPU
            done += batch
    return done / (time.perf_counter() - start)


def vitdex_ingest(
    folder: Path, checkpoint: Path, batch: int, device: str, runtime: str, cache: Path,
    profile: bool = False,
) -> tuple[float, float, int]:
    """(images per second, model load seconds, images stored) through Library.ingest.

    The int8 export is cached in each library's models/ folder; `cache` keeps it between the
    fresh libraries of the rounds (hard links), so only the first round's load builds it.
    """
    from vitdex.library import Library

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lib-", dir=common.OUT) as tmp:
        library = Library.open(Path(tmp), create=True)
        models = library.folder / "models"
        models.mkdir(exist_ok=True)
        for path in cache.glob("*.onnx"):
            os.link(path, models / path.name)
        load_s, _ = common.timed(library.embedder, str(checkpoint), device=device, runtime=runtime)
        for path in models.glob("*.onnx"):
            if not (cache / path.name).exists():
                os.link(path, cache / path.name)
        run = functools.partial(
            library.ingest, [folder], model=str(checkpoint), batch_size=batch, device=device,
            runtime=runtime,
        )
        if profile:  # the main thread: planning, waiting on decode, the model, SQLite
            profiler = cProfile.Profile()
            seconds, report = common.timed(profiler.runcall, run)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        else:
            seconds, report = common.timed(run)
        library.close()
    return report.added / seconds, load_s, report.added


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=40, help="4000x3000 photos")
    parser.add_argument("--small", type=int, default=40, help="1920x1080 photos")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", default="fp32,int8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="cProfile one more vitdex run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("vitdex", "transformers", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    common.quiet_transformers()
    threads = os.cpu_count() or 1
    folder = common.photo_folder(
        f"ingest-{args.big}x12mp-{args.small}x2mp",
        [(args.big, (4000, 3000)), (args.small, (1920, 1080))],
    )
    paths = list_photos(folder)
    checkpoint = common.vit_base_checkpoint()
    cache = common.OUT / "models" / f"int8-cache-{args.device}"
    runtimes = [r for r in args.runtimes.split(",") if r]
    log.info("machine: %s", common.machine())
    log.info("%d photos in %s, batch %d, device %s", len(paths), folder, args.batch, args.device)

    rows: dict[str, list[float]] = {"reference": [], "model only": []}
    loads: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        rows["reference"].append(reference(paths, checkpoint, args.batch, args.device, threads))
        rows["model only"].append(
            model_only(checkpoint, len(paths), args.batch, args.device, threads)
        )
        for runtime in runtimes:
            rate, load_s, added = vitdex_ingest(
                folder, checkpoint, args.batch, args.device, runtime, cache
            )
            assert added == len(paths), f"{runtime}: stored {added} of {len(paths)}"
            rows.setdefault(f"vitdex {runtime}", []).append(rate)
            loads.setdefault(runtime, []).append(load_s)
        ref = rows["reference"][-1]
        log.info(
            "round %d: %s", round_no + 1,
            ", ".join(f"{k} {v[-1]:.2f} img/s ({v[-1] / ref:.2f}x ref)" for k, v in rows.items()),
        )

    ratios = {
        k: statistics.median(np.array(v) / np.array(rows["reference"])) for k, v in rows.items()
    }
    ceiling = statistics.median(
        np.array(rows.get("vitdex fp32", rows["model only"])) / np.array(rows["model only"])
    )
    print(f"\nmachine: {common.machine()}")
    print(f"{len(paths)} JPEGs ({args.big} at 4000x3000, {args.small} at 1920x1080), batch "
          f"{args.batch}, device {args.device}, {args.rounds} rounds (median)\n")
    print("| pipeline | img/s (median) | x reference (median of per-round ratios) |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} | {ratios[name]:.2f} |")
    print(f"\nvitdex fp32 / model only (median of per-round ratios): {ceiling:.2f}")
    for runtime, values in loads.items():
        print(f"model load {runtime}: " + ", ".join(f"{v:.1f} s" for v in values))
    if args.profile:
        for runtime in runtimes:
            print(f"\ncProfile of one more vitdex {runtime} ingest (main thread, by own time):")
            vitdex_ingest(folder, checkpoint, args.batch, args.device, runtime, cache, True)


if __name__ == "__main__":
    main()
