"""Decoding: content sniffing, EXIF metadata and orientation, PIL modes, hostile files."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.photos import make_photo, photo_array
from vitdex.embedder import DecodeError, ImageInfo, decode_image, sniff_image_format
from vitdex.embedder.decode import IMAGE_SUFFIXES, to_rgb
from vitdex.library.errors import VitdexError


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_sniff_by_content_not_extension(tmp_path):
    disguised = make_photo(tmp_path / "photo.dat", format="JPEG")
    text = tmp_path / "x.jpg"
    text.write_text("hello, I am not a photo\n")
    assert sniff_image_format(disguised) == "JPEG"
    assert sniff_image_format(text) is None
    with pytest.raises(DecodeError, match=r"not a regular file \(directory\)"):
        sniff_image_format(tmp_path)
    assert sniff_image_format(make_photo(tmp_path / "a.png")) == "PNG"
    assert sniff_image_format(make_photo(tmp_path / "a.webp")) == "WEBP"
    image, info = decode_image(disguised)
    assert image.mode == "RGB" and info.format == "JPEG"
    assert {".jpg", ".jpeg", ".png", ".heic", ".avif", ".webp", ".tif"} <= IMAGE_SUFFIXES


def test_sniff_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "p.heic"
    Image.fromarray(photo_array((64, 48), 3)).save(path, format="HEIF")
    assert sniff_image_format(path) == "HEIF"


def test_image_info_reads_exif(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D Mark IV"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 12:34:56"
    path = tmp_path / "exif.jpg"
    Image.fromarray(photo_array((160, 120), 1)).save(path, exif=exif, quality=90)
    _image, info = decode_image(path)
    assert info == ImageInfo(
        width=160,
        height=120,
        format="JPEG",
        taken_at="2021-07-04T12:34:56",
        camera_make="Canon",
        camera_model="EOS 5D Mark IV",
    )
    _image, plain = decode_image(make_photo(tmp_path / "plain.jpg"))
    assert plain.taken_at is None and plain.camera_make is None and plain.camera_model is None


@pytest.mark.parametrize(
    ("orientation", "method"), [(6, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)]
)
def test_exif_orientation_applied(tmp_path, orientation, method):
    path = tmp_path / f"rot{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo_array((320, 240), 5)).save(path, exif=exif, quality=95)
    image, info = decode_image(path)
    with Image.open(path) as raw:
        expected = raw.convert("RGB").transpose(method)
    assert image.size == expected.size == (info.width, info.height)
    if orientation == 6:
        assert (info.width, info.height) == (240, 320)
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def _mode_images(tmp_path: Path) -> dict[str, Path]:
    rgb = Image.fromarray(photo_array((96, 64), 2))
    alpha = Image.linear_gradient("L").resize(rgb.size)
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        out[name] = tmp_path / name
        image.save(out[name], **kw)

    save("rgba.png", Image.merge("RGBA", (*rgb.split(), alpha)))
    pal = rgb.quantize(64)
    save("p_transparent.png", pal, transparency=3)
    save("p_transparent.gif", pal, transparency=5)
    save("gray.png", rgb.convert("L"))
    save("bw.png", rgb.convert("1"))
    save("la.png", Image.merge("LA", (rgb.convert("L"), alpha)))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=92)
    wide = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    save("i16.png", Image.fromarray(wide))
    save("i32.tif", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.int32)))
    save("f32.tif", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) / 255.0))
    return out


def test_every_mode_converted_like_transformers(tmp_path):
    """Our RGB conversion is transformers' convert_to_rgb, pixel for pixel."""
    from transformers.image_transforms import convert_to_rgb

    for name, path in _mode_images(tmp_path).items():
        image, _info = decode_image(path)
        with Image.open(path) as opened:
            source_mode = opened.mode
            expected = convert_to_rgb(ImageOps.exif_transpose(opened), return_numpy=True)
        assert image.mode == "RGB", name
        assert np.array_equal(np.asarray(image), expected), f"{name} ({source_mode})"
        assert np.array_equal(np.asarray(to_rgb(Image.open(path))), expected), name


def test_alpha_composited_on_white(tmp_path):
    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    clear.save(tmp_path / "clear.png")
    image, _ = decode_image(tmp_path / "clear.png")
    assert np.all(np.asarray(image) == 255)


def test_first_frame_of_multiframe(tmp_path):
    frames = [Image.fromarray(photo_array((64, 48), seed)) for seed in (1, 2, 3)]
    for name in ("anim.gif", "multi.tiff"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        image, info = decode_image(tmp_path / name)
        with Image.open(tmp_path / name) as opened:
            assert getattr(opened, "n_frames", 1) == 3
            first = opened.convert("RGB")
        assert np.array_equal(np.asarray(image), np.asarray(first)), name
        assert (info.width, info.height) == (64, 48)


def test_draft_keeps_original_size_in_info(big_photo):
    image, info = decode_image(big_photo, target_size=224)
    assert (info.width, info.height) == (4000, 3000)
    assert image.size == (1000, 750)  # libjpeg 1/4 scale, still >= 3 x 224
    full, _ = decode_image(big_photo, target_size=224, draft=False)
    assert full.size == (4000, 3000)


def _hostile(tmp_path: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    cases["empty"] = tmp_path / "empty.jpg"
    cases["empty"].write_bytes(b"")
    good = make_photo(tmp_path / "good.jpg", size=(320, 240))
    cases["truncated"] = tmp_path / "truncated.jpg"
    cases["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["random"] = tmp_path / "random.jpg"
    cases["random"].write_bytes(os.urandom(4096))
    cases["text"] = tmp_path / "notes.jpg"
    cases["text"].write_text("this is a text file\nwith two lines\n")
    cases["directory"] = tmp_path / "x.jpg"
    cases["directory"].mkdir()
    cases["bomb_header"] = _png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    cases["missing"] = tmp_path / "missing.jpg"
    return cases


@pytest.mark.parametrize(
    "case", ["empty", "truncated", "random", "text", "directory", "bomb_header", "missing"]
)
def test_hostile_inputs_raise_decode_error(tmp_path, case):
    path = _hostile(tmp_path)[case]
    with pytest.raises(DecodeError) as caught:
        decode_image(path, target_size=224)
    message = str(caught.value)
    assert isinstance(caught.value, VitdexError)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert len(caught.value.reason) > 3
    assert caught.value.path == path


@pytest.mark.parametrize("limit", [1_000, 50_000])  # error zone (>2x) and warning zone (1x-2x)
def test_decompression_bomb_refused(tmp_path, monkeypatch, limit):
    path = make_photo(tmp_path / "big.png", size=(320, 240))  # 76,800 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(path)


def test_heic_decodes(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "photo.heic"
    Image.fromarray(photo_array((128, 96), 4)).save(path, format="HEIF", quality=90)
    image, info = decode_image(path)
    assert image.mode == "RGB" and image.size == (128, 96)
    assert info.format == "HEIF"
