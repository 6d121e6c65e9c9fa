"""Synthetic photos that look like photos to a codec: gradients, shapes and noise, so they do not
compress trivially and distinct seeds give distinct images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo_array(size: tuple[int, int], seed: int) -> np.ndarray:
    """An RGB uint8 array of shape (height, width, 3)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 6.28)
        base[..., c] = 127 + 100 * np.sin(fx * x / width * 6.28 + phase) * np.cos(
            fy * y / height * 6.28
        )
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(max(2, min(size) // 10), max(3, min(size) // 3)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
        else:
            draw.rectangle([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
    array = np.asarray(image).astype(np.int16)
    array += rng.integers(-12, 13, array.shape, dtype=np.int16)
    return array.clip(0, 255).astype(np.uint8)


def make_photo(
    path: Path, size: tuple[int, int] = (320, 240), seed: int = 0, quality: int = 90, **save_args
) -> Path:
    """Write a synthetic photo; the format follows the file suffix unless `format` is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photo_array(size, seed))
    fmt = save_args.pop("format", None)
    if (fmt or path.suffix.lower().lstrip(".")) in ("jpg", "jpeg", "JPEG"):
        save_args.setdefault("quality", quality)
    image.save(path, format=fmt, **save_args)
    return path
