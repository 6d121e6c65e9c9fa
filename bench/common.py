"""Helpers shared by the benchmarks: the machine line, generated photos and the ViT-B/16 checkpoint.

Generated data and checkpoints live under bench/out/ (git-ignored) and are reused between runs, so a
second run measures vitdex, not the photo generator.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))  # tests.photos: the same realistic JPEGs the tests use

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_transformers() -> None:
    """No load reports or progress bars from transformers in the benchmark output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def machine() -> str:
    """CPU model name and core count (lscpu), plus the GPU when torch sees one."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if "Model name" in line),
            platform.processor() or "unknown CPU",
        )
    except OSError:
        model = platform.processor() or "unknown CPU"
    line = f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        import torch

        line += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            line += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return line


def photo_folder(name: str, groups: list[tuple[int, tuple[int, int]]]) -> Path:
    """A folder of realistic JPEGs: `count` photos of each (width, height), made once, in
    parallel processes (a 12 MP photo takes about a second to make)."""
    from concurrent.futures import ProcessPoolExecutor

    from tests.photos import make_photo

    folder = OUT / "data" / name
    done = folder / ".complete"
    if done.exists():
        return folder
    jobs = []
    for count, size in groups:
        for _ in range(count):
            seed = len(jobs)
            jobs.append((folder / f"{size[0]}x{size[1]}" / f"p{seed:05d}.jpg", size, seed))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make_photo, *zip(*jobs, strict=True)))
    done.touch()
    return folder


def vit_base_checkpoint() -> Path:
    """ViT-B/16 shape (ViTConfig defaults), random weights, saved like vit-base-patch16-224."""
    folder = OUT / "models" / "vit-base-random"
    if (folder / "preprocessor_config.json").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig()).eval().save_pretrained(folder)
    ViTImageProcessorPil(
        size={"height": 224, "width": 224},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)
    return folder


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def small_photo_folder(count: int = 10_000, per_folder: int = 1000) -> Path:
    """`count` small distinct JPEGs (64x48) in sub-folders of `per_folder`: d00, d01, ..."""
    from tests.photos import make_photo

    folder = OUT / "data" / f"small-{count}"
    done = folder / ".complete"
    if not done.exists():
        for i in range(count):
            sub = folder / f"d{i // per_folder:02d}"
            make_photo(sub / f"s{i:05d}.jpg", size=(64, 48), seed=100_000 + i, quality=80)
        done.touch()
    return folder


def tiny_checkpoint() -> Path:
    """The tests' tiny random ViT (tests/conftest.py), saved once."""
    from tests.conftest import save_tiny_vit

    folder = OUT / "models" / "tiny-vit"
    if not (folder / "preprocessor_config.json").exists():
        save_tiny_vit(folder)
    return folder
