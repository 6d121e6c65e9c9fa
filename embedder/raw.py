"""Camera RAW files (DNG, NEF, ARW, CR2, ORF, RAF), decoded at their full size through rawpy.

Most RAW formats are TIFF underneath, and Pillow opens them as TIFF: it sees only the tiny IFD0
thumbnail, so the vector and the stored size (the duplicate keeper rule: most pixels) would be
silently wrong. RAW is therefore recognised before Pillow is asked: by suffix, and for DNG also
by its DNGVersion tag. With the optional `raw` extra (rawpy, LibRaw) the embedded preview JPEG is
used when it is large enough, else the sensor data is demosaiced; without it every RAW file
fails with one line saying how to enable RAW, rather than being embedded from its thumbnail.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from vitdex.embedder.decode import (
    DRAFT_FACTOR,
    RAW_SUFFIXES,
    ImageInfo,
    _decode_open,
    _exif_facts,
    _refuse_bomb,
    _sniff_head,
    to_rgb,
)
from vitdex.embedder.errors import DecodeError

ENABLE_RAW = 'pip install "vitdex[raw]"'

_TAG_DNG_VERSION = 50706
_TAG_ORIENTATION = 0x0112
_IFD0_MAX_ENTRIES = 4096  # a corrupt count must not make us read megabytes
_PIL_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90,
             6: Image.Transpose.ROTATE_270}  # fmt: skip
"""LibRaw's flip (0 none, 3 180°, 5 90° counter-clockwise, 6 90° clockwise) as PIL transposes."""


def raw_format(path: Path, handle: BinaryIO) -> str | None:
    """The RAW format of an opened file ("DNG", "NEF", ...), or None; leaves it at offset 0.

    By suffix unless the content is plainly another format (a JPEG misnamed .nef is a JPEG),
    and by the DNGVersion tag for a DNG with another name.
    """
    head = handle.read(32)
    try:
        sniffed = _sniff_head(head)
        suffix = path.suffix.lower()
        if suffix in RAW_SUFFIXES and sniffed in (None, "TIFF"):
            return suffix[1:].upper()
        if sniffed == "TIFF" and _has_dng_version(handle, head):
            return "DNG"
        return None
    finally:
        handle.seek(0)


def _has_dng_version(handle: BinaryIO, head: bytes) -> bool:
    """Whether IFD0 of a classic TIFF carries the DNGVersion tag."""
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] not in (b"*\x00", b"\x00*"):  # BigTIFF: no camera writes DNG as BigTIFF
        return False
    try:
        (offset,) = struct.unpack(order + "I", head[4:8])
        handle.seek(offset)
        (count,) = struct.unpack(order + "H", handle.read(2))
        entries = handle.read(12 * min(count, _IFD0_MAX_ENTRIES))
    except (OSError, struct.error):
        return False
    tags = (struct.unpack_from(order + "H", entries, i)[0] for i in range(0, len(entries) - 11, 12))
    return _TAG_DNG_VERSION in tags


def decode_raw(
    path: Path, handle: BinaryIO, kind: str, draft_target: int | None
) -> tuple[Image.Image, ImageInfo]:
    """Decode a RAW file upright, with the full image size in its ImageInfo.

    The preview JPEG is used when its short side reaches what a decode needs: DRAFT_FACTOR times
    the model input (`draft_target`), or with no draft target half the full short side. Else
    the sensor data is demosaiced (at half size when that still leaves the draft margin).
    """
    try:
        import rawpy
    except ImportError:
        raise DecodeError(
            path, f"{kind} RAW file, and RAW support is not installed: {ENABLE_RAW}"
        ) from None
    facts = _tiff_facts(handle)
    try:
        with rawpy.imread(handle) as raw:
            sizes = raw.sizes
            _refuse_bomb(path, (sizes.width, sizes.height))
            width, height = sizes.width, sizes.height
            if sizes.flip in (5, 6):
                width, height = height, width
            info = ImageInfo(width=width, height=height, format=kind, **facts)
            short = min(width, height)
            needed = min(short, DRAFT_FACTOR * draft_target) if draft_target else short // 2
            image = _preview(raw, rawpy, needed, sizes.flip, draft_target)
            if image is None:
                half = bool(draft_target) and short // 2 >= DRAFT_FACTOR * draft_target
                image = Image.fromarray(raw.postprocess(use_camera_wb=True, half_size=half))
            return image, info
    except DecodeError:
        raise
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        raise DecodeError(path, f"cannot decode {kind} RAW file: {exc}") from exc


def _preview(
    raw: Any, rawpy: Any, needed: int, flip: int, draft_target: int | None
) -> Image.Image | None:
    """The embedded JPEG preview, upright, when its short side is at least `needed`."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        opened = Image.open(io.BytesIO(thumb.data))
        if opened.format != "JPEG" or min(opened.size) < needed:
            return None
        own_orientation = opened.getexif().get(_TAG_ORIENTATION, 1) != 1
        image, _ = _decode_open(opened, draft_target)
    except Exception:  # a damaged preview: the sensor data is still there
        return None
    return image if own_orientation else apply_flip(image, flip)


def apply_flip(image: Image.Image, flip: int) -> Image.Image:
    """Turn `image` upright by LibRaw's flip code (what postprocess does to the sensor data)."""
    transpose = _PIL_FLIP.get(flip)
    return to_rgb(image.transpose(transpose)) if transpose is not None else image


def _tiff_facts(handle: BinaryIO) -> dict[str, str | None]:
    """Date and camera from the RAW's TIFF EXIF (DNG, NEF, ARW, CR2); none for ORF or RAF."""
    try:
        with Image.open(handle) as opened:
            return _exif_facts(opened.getexif())
    except Exception:  # not TIFF-based, or a maker header Pillow does not parse
        return {"taken_at": None, "camera_make": None, "camera_model": None}
    finally:
        handle.seek(0)
