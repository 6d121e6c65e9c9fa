"""Thumbnails and large previews, rendered once from the upright (EXIF-transposed) image and cached
in the library under thumbs/, named by content sha256 so a copy or a move reuses them.

Rendering reads an already opened file (the gallery opens it through `Library.open_image_file`,
so only the file that was ingested is ever read) and bounds its memory: a JPEG is decoded by
libjpeg at 1/2, 1/4 or 1/8 scale, never larger than needed, and at most RENDER_SLOTS renders run
at once.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from vitdex.embedder import DecodeError
from vitdex.embedder.decode import register_plugins, to_rgb

THUMB_SIZE = 256
LARGE_SIZE = 1600
SIZES = {"thumb": THUMB_SIZE, "large": LARGE_SIZE}
RENDER_SLOTS = 2  # concurrent decodes: each may hold a full frame of a non-JPEG image
_renders = threading.BoundedSemaphore(RENDER_SLOTS)


def cache_path(library_folder: Path, sha256: str, kind: str = "thumb") -> Path:
    folder = library_folder / "thumbs"
    if kind != "thumb":
        folder = folder / kind
    return folder / f"{sha256}.jpg"


def render(source: str | Path | BinaryIO, size: int, name: str = "") -> bytes:
    """`source` (a path or an open binary file) upright, fitted into size x size, as JPEG bytes.

    A JPEG is asked for a draft at the smallest libjpeg scale that still covers size x size, so
    an 88 MP photo decodes to about 5 MP, not 88. Raises DecodeError naming `name`.
    """
    register_plugins()
    name = name or str(source)
    try:
        with _renders, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                if opened.format == "JPEG":
                    opened.draft(opened.mode, (size, size))
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)  # no copy of a full frame
                image = to_rgb(opened)
                image.thumbnail((size, size))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=85, optimize=True)
                return buffer.getvalue()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(name, f"refused as a possible decompression bomb ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError(name, "not an image (unrecognised content)") from exc
    except MemoryError as exc:
        raise DecodeError(name, "out of memory while decoding") from exc
    except Exception as exc:  # truncated data, bad headers, codec errors: per-file problems
        raise DecodeError(name, f"cannot decode: {type(exc).__name__}: {exc}") from exc


def cached(library_folder: Path, sha256: str, kind: str = "thumb") -> Path | None:
    """The cached JPEG of this content, if one was rendered already."""
    target = cache_path(library_folder, sha256, kind)
    return target if target.is_file() else None


def ensure(
    library_folder: Path,
    sha256: str,
    source: str | Path | BinaryIO,
    kind: str = "thumb",
    name: str = "",
) -> Path:
    """The cached JPEG for this content, rendered from `source` first when missing.

    Written to a temporary file then renamed, so a concurrent request never reads half a JPEG.
    Raises DecodeError when the source cannot be decoded.
    """
    target = cached(library_folder, sha256, kind)
    if target is not None:
        return target
    target = cache_path(library_folder, sha256, kind)
    data = render(source, SIZES[kind], name)
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
