"""Turn a file into the RGB image the checkpoint's processor would see, plus its metadata.

Files are recognised by content, not by extension: photo folders are full of misnamed files.
Every failure becomes a DecodeError so one bad file never stops an ingest.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from vitdex.embedder.errors import DecodeError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif",
        ".tiff", ".webp", ".heic", ".heif", ".hif", ".avif", ".jp2", ".j2k", ".jpx", ".ico",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".psd", ".dng", ".nef", ".arw", ".cr2", ".orf",
        ".raf",
    }
)  # fmt: skip
"""Lower-case suffixes of files that claim to be images (content is still checked)."""

RAW_SUFFIXES: frozenset[str] = frozenset({".dng", ".nef", ".arw", ".cr2", ".orf", ".raf"})
"""Camera RAW formats (embedder/raw.py): decoded by rawpy, never by Pillow as TIFF."""

NOT_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".xmp", ".aae", ".thm", ".json", ".mov", ".mp4", ".m4v", ".3gp"}
)
"""Sidecars and movies that sit beside photos: never images, whatever their first bytes. A Canon
.THM is a small JPEG of the photo beside it, a Live Photo's .mov is its movie, .xmp/.aae/.json
hold edits and metadata; embedding one would add a duplicate or fail, so they are not ours."""

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
                b"msf1", b"mif2"}  # fmt: skip
_AVIF_BRANDS = {b"avif", b"avis"}

DRAFT_FACTOR = 3
"""JPEG draft never decodes below this many times the model input side (parity margin)."""

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_DATETIME = 0x0132
_TAG_DATETIME_ORIGINAL = 0x9003

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs to block on
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows only
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)  # opening a terminal device must not make it ours

_plugins_lock = threading.Lock()
_plugins_ready = False


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What we learn about a photo while decoding it (size is after EXIF orientation)."""

    width: int
    height: int
    format: str | None
    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None


def register_plugins() -> None:
    """Teach Pillow HEIC/HEIF (pillow_heif); AVIF comes from Pillow itself when built with it."""
    global _plugins_ready
    with _plugins_lock:
        if _plugins_ready:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - declared dependency
            log.warning("pillow_heif is not installed; HEIC/HEIF files will be skipped")
        _plugins_ready = True


def open_image_file(path: str | Path) -> BinaryIO:
    """Open `path` for binary reading, refusing anything but a regular file.

    The open is non-blocking, so a FIFO with no writer cannot hang it, and the descriptor is
    checked with fstat (the file actually opened, not a path looked up twice), so a FIFO, a
    device such as /dev/zero or a folder is refused before a byte is read. Raises DecodeError
    for those and OSError when the file cannot be opened at all.
    """
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY | _O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DecodeError(path, f"not a regular file ({_file_kind(mode)})")
        if _O_NONBLOCK:  # reads of the regular file are ordinary blocking reads again
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
    )  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def sniff_image_format(path: str | Path) -> str | None:
    """Name the format from the first bytes (JPEG, PNG, HEIF, ...); None if not an image.

    None too when the file cannot be opened, or is named as a sidecar (NOT_IMAGE_SUFFIXES);
    DecodeError when it is not a regular file.
    """
    if Path(path).suffix.lower() in NOT_IMAGE_SUFFIXES:
        return None
    try:
        with open_image_file(path) as fh:
            head = fh.read(32)
    except OSError:
        return None
    return _sniff_head(head)


def _sniff_head(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 18:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, len(head) - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        return None
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"8BPS"):
        return "PSD"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "PPM"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB exactly as transformers' `convert_to_rgb` does.

    Transparency is composited onto white; everything else is Pillow's own `convert("RGB")`
    (so 16-bit images are clipped the same way the processor clips them: parity over taste).
    """
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def decode_image(
    path: str | Path, target_size: int | None = None, *, draft: bool = True
) -> tuple[Image.Image, ImageInfo]:
    """Decode the first frame of `path` into an upright RGB image and its ImageInfo.

    With `target_size` and `draft`, large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    (still at least DRAFT_FACTOR times the target), which is several times faster for camera photos.
    Camera RAW files are decoded at their full size by embedder/raw.py (the `raw` extra).
    Raises DecodeError for anything that is not a readable image.
    """
    register_plugins()
    path = Path(path)
    try:
        handle = open_image_file(path)
    except OSError as exc:
        raise DecodeError(path, f"cannot read file: {exc.strerror or exc}") from exc
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise DecodeError(path, "empty file")
        from vitdex.embedder.raw import decode_raw, raw_format

        try:
            if kind := raw_format(path, handle):
                return decode_raw(path, handle, kind, target_size if draft else None)
            with Image.open(handle) as opened:
                _refuse_bomb(path, opened.size)
                return _decode_open(opened, target_size if draft else None)
        except DecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError(path, f"refused as a possible decompression bomb ({exc})") from exc
        except Image.UnidentifiedImageError as exc:
            handle.seek(0)
            sniffed = _sniff_head(handle.read(32))
            what = f"looks like {sniffed} but Pillow cannot open it" if sniffed else "not an image"
            raise DecodeError(path, f"{what} (unrecognised content)") from exc
        except MemoryError as exc:
            raise DecodeError(path, "out of memory while decoding") from exc
        except Exception as exc:  # truncated data, bad headers, codec errors: per-file problems
            raise DecodeError(path, f"cannot decode: {type(exc).__name__}: {exc}") from exc


def _refuse_bomb(path: Path, size: tuple[int, int]) -> None:
    """Refuse more pixels than Image.MAX_IMAGE_PIXELS, Pillow's warning zone included.

    Pillow itself raises only above twice the limit and merely warns between; comparing here
    refuses both without switching warning filters, which are process-wide, from threads.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = max(1, size[0]) * max(1, size[1])
    if limit is not None and pixels > limit:
        raise DecodeError(
            path,
            f"refused as a possible decompression bomb ({pixels} pixels, over the limit of"
            f" {limit})",
        )


def _decode_open(opened: Image.Image, draft_target: int | None) -> tuple[Image.Image, ImageInfo]:
    exif = opened.getexif()
    orientation = exif.get(_TAG_ORIENTATION, 1)
    width, height = opened.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    info = ImageInfo(width=width, height=height, format=opened.format, **_exif_facts(exif))
    if draft_target and opened.format == "JPEG":
        floor = DRAFT_FACTOR * draft_target
        opened.draft(opened.mode, (floor, floor))
    opened.load()  # first frame of multi-frame files: Image.open leaves us on frame 0
    ImageOps.exif_transpose(opened, in_place=True)  # in place: no copy of a 12 MP frame
    return to_rgb(opened), info


def _exif_facts(exif: Image.Exif) -> dict[str, str | None]:
    """ImageInfo's date and camera fields from EXIF."""
    return {
        "taken_at": _taken_at(exif),
        "camera_make": _text(exif.get(_TAG_MAKE)),
        "camera_model": _text(exif.get(_TAG_MODEL)),
    }


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    return text or None


def _taken_at(exif: Image.Exif) -> str | None:
    """EXIF DateTimeOriginal (else DateTime) as an ISO string; None when absent or malformed."""
    try:
        raw = exif.get_ifd(_EXIF_IFD).get(_TAG_DATETIME_ORIGINAL) or exif.get(_TAG_DATETIME)
    except Exception:  # malformed EXIF must not fail the decode
        return None
    text = _text(raw)
    if not text:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M"):
        try:
            return datetime.strptime(text[:19], fmt).isoformat()
        except ValueError:
            continue
    return None
