"""Thumbnails and large previews, rendered once from the upright (EXIF-transposed) image and cached
in the library under thumbs/, named by content sha256 so a copy or a move reuses them."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from vitdex.embedder import decode_image

THUMB_SIZE = 256
LARGE_SIZE = 1600
SIZES = {"thumb": THUMB_SIZE, "large": LARGE_SIZE}


def cache_path(library_folder: Path, sha256: str, kind: str = "thumb") -> Path:
    folder = library_folder / "thumbs"
    if kind != "thumb":
        folder = folder / kind
    return folder / f"{sha256}.jpg"


def render(source: str | Path, size: int) -> bytes:
    """`source` upright, fitted into size x size, as JPEG bytes. Raises DecodeError."""
    image, _info = decode_image(source, size)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def ensure(library_folder: Path, sha256: str, source: str | Path, kind: str = "thumb") -> Path:
    """The cached JPEG for this content, rendered from `source` first when missing.

    Written to a temporary file then renamed, so a concurrent request never reads half a JPEG.
    Raises DecodeError when the source is gone or unreadable.
    """
    target = cache_path(library_folder, sha256, kind)
    if target.is_file():
        return target
    data = render(source, SIZES[kind])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".jpg.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
