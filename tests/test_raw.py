"""Camera RAW files: decoded at their full size (rawpy), never from their TIFF thumbnail.

The DNGs are written here with tifffile: IFD0 holds a small RGB thumbnail (what Pillow sees), a
SubIFD the 16-bit Bayer (CFA) sensor data, and optionally another SubIFD a JPEG preview.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.photos import photo_array
from tests.test_ingest import ingest
from vitdex.embedder import DecodeError, decode_image
from vitdex.embedder.raw import ENABLE_RAW, apply_flip
from vitdex.library import Library

tifffile = pytest.importorskip("tifffile")

SIZE = (320, 240)  # width, height of the sensor data
THUMB = (40, 30)
WHITE = 4095


def write_dng(
    path: Path,
    *,
    seed: int = 0,
    preview: Image.Image | None = None,
    orientation: int = 1,
    camera: tuple[str, str] = ("Acme", "Raw 1"),
    size: tuple[int, int] = SIZE,
) -> Path:
    """A minimal DNG that LibRaw opens: RGGB mosaic of a synthetic photo, 12 bits in 16."""
    width, height = size
    rgb = photo_array(size, seed).astype(np.uint16) * 16
    mosaic = np.empty((height, width), np.uint16)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    thumbnail = np.full((THUMB[1], THUMB[0], 3), 90, np.uint8)  # flat grey: unlike the photo
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    ifd0_tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, " ".join(camera), True),  # UniqueCameraModel
        (271, "s", 0, camera[0], True),  # Make
        (272, "s", 0, camera[1], True),  # Model
        (274, "H", 1, orientation, True),
        (50721, "2i", 9, identity, True),  # ColorMatrix1
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    cfa_tags = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50717, "I", 1, WHITE, True),  # WhiteLevel
    ]
    with tifffile.TiffWriter(path) as tif:
        tif.write(thumbnail, photometric="rgb", subfiletype=1, subifds=2 if preview else 1,
                  metadata=None, extratags=ifd0_tags)  # fmt: skip
        tif.write(mosaic, photometric=32803, subfiletype=0, metadata=None, extratags=cfa_tags)
        if preview is not None:
            _write_jpeg_ifd(tif, preview)
    return path


def _write_jpeg_ifd(tif, preview: Image.Image) -> None:
    """A preview IFD of already encoded JPEG bytes (tifffile only asks imagecodecs to encode)."""
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=95)
    codecs = tifffile.TIFF.COMPRESSORS._codecs
    codecs[7] = lambda data, **_: data  # never called: the strip is passed encoded
    try:
        tif.write(iter([buffer.getvalue()]), shape=(preview.height, preview.width, 3),
                  dtype="uint8", photometric="ycbcr", subsampling=(1, 1), compression=7,
                  subfiletype=1, metadata=None)  # fmt: skip
    finally:
        del codecs[7]


def _halves(size: tuple[int, int]) -> Image.Image:
    """A photo whose left half is tinted red: shows where the left edge went after a turn."""
    array = photo_array(size, seed=5)
    array[:, : size[0] // 2, 0] = 250
    return Image.fromarray(array)


def _no_rawpy(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "rawpy", None)  # `import rawpy` raises ImportError


# --- with rawpy -------------------------------------------------------------------------------
@pytest.fixture
def rawpy():
    return pytest.importorskip("rawpy")


def test_dng_decodes_at_full_size_not_from_its_thumbnail(rawpy, tmp_path, tiny_embedder):
    dng = write_dng(tmp_path / "shot.dng")
    image, info = decode_image(dng)
    assert (info.width, info.height, info.format) == (*SIZE, "DNG")
    assert image.size == SIZE and image.mode == "RGB"
    assert np.asarray(image).std() > 20  # the demosaiced photo, not the flat grey thumbnail
    assert (info.camera_make, info.camera_model) == ("Acme", "Raw 1")
    vector = tiny_embedder.embed_path(dng)["cls"]
    with Image.open(dng) as thumbnail:  # what the TIFF reading embedded before
        assert thumbnail.size == THUMB
        from_thumbnail = tiny_embedder.embed_images([thumbnail.convert("RGB")])["cls"][0]
    assert float(vector @ from_thumbnail) < 0.999


def test_dng_preview_is_used_and_turned_upright(rawpy, tmp_path):
    preview = _halves(SIZE)
    dng = write_dng(tmp_path / "turned.dng", preview=preview, orientation=6)
    image, info = decode_image(dng)
    assert (info.width, info.height) == (SIZE[1], SIZE[0])  # full size, after orientation
    expected = preview.transpose(Image.Transpose.ROTATE_270)  # orientation 6: 90° clockwise
    assert image.size == expected.size
    with Image.open(io.BytesIO(_jpeg(preview))) as decoded:  # the preview's own JPEG pixels
        expected = np.asarray(decoded.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(image), expected)
    top, bottom = np.asarray(image)[:20, :, 0].mean(), np.asarray(image)[-20:, :, 0].mean()
    assert top > bottom + 40  # the red left half is on top: turned clockwise


def test_small_preview_is_not_used(rawpy, tmp_path):
    blue = Image.new("RGB", (80, 60), (0, 0, 255))
    image, info = decode_image(write_dng(tmp_path / "small.dng", preview=blue))
    assert image.size == SIZE and (info.width, info.height) == SIZE
    assert np.asarray(image)[..., 2].mean() < 200  # demosaiced, not the blue preview


def test_draft_decode_uses_a_preview_as_large_as_the_image(rawpy, tmp_path):
    preview = _halves(SIZE)
    image, info = decode_image(write_dng(tmp_path / "p.dng", preview=preview), target_size=224)
    assert (info.width, info.height) == SIZE
    assert np.asarray(image)[:, :40, 0].mean() > 240  # the preview's red left edge


def test_draft_demosaics_a_large_raw_at_half_size(rawpy, tmp_path):
    size = (1400, 1360)  # half of the short side (680) still covers 3 x 224
    image, info = decode_image(write_dng(tmp_path / "big.dng", size=size), target_size=224)
    assert (info.width, info.height) == size
    assert image.size == (700, 680)
    full, _ = decode_image(tmp_path / "big.dng", target_size=224, draft=False)
    assert full.size == size


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_apply_flip_turns_as_libraw_does(rawpy, tmp_path, orientation):
    dng = write_dng(tmp_path / "o.dng", orientation=orientation)
    with rawpy.imread(str(dng)) as raw:
        flat = Image.fromarray(raw.postprocess(user_flip=0))
        upright = raw.postprocess()
        flip = raw.sizes.flip
    assert flip != 0
    np.testing.assert_array_equal(np.asarray(apply_flip(flat, flip)), upright)


def test_dng_without_its_suffix_is_still_raw(rawpy, tmp_path):
    renamed = shutil.copy(write_dng(tmp_path / "a.dng"), tmp_path / "scan.tif")
    image, info = decode_image(renamed)
    assert (info.width, info.height, info.format) == (*SIZE, "DNG")
    assert image.size == SIZE


def test_jpeg_misnamed_as_raw_is_a_jpeg(tmp_path):
    path = tmp_path / "photo.NEF"
    Image.fromarray(photo_array((64, 48), seed=1)).save(path, format="JPEG")
    _, info = decode_image(path)
    assert (info.width, info.height, info.format) == (64, 48, "JPEG")


def test_ingest_stores_the_full_size_of_a_raw(rawpy, tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_dng(folder / "DSC_0001.dng")
    report = ingest(tmp_path / "lib", folder, model=tiny_model)
    assert report["added"] == 1 and report["failed"] == []
    with Library.open(tmp_path / "lib") as library:
        (image,) = library.store.images.under()
        assert (image.width, image.height, image.format) == (*SIZE, "DNG")


# --- without rawpy ----------------------------------------------------------------------------
def test_raw_without_rawpy_fails_with_how_to_enable_it(tmp_path, monkeypatch):
    dng = write_dng(tmp_path / "shot.dng")
    _no_rawpy(monkeypatch)
    for path in (dng, shutil.copy(dng, tmp_path / "renamed.tiff")):
        with pytest.raises(DecodeError) as caught:
            decode_image(path)
        assert (
            caught.value.reason == f"DNG RAW file, and RAW support is not installed: {ENABLE_RAW}"
        )
        assert "\n" not in str(caught.value)


def test_ingest_without_rawpy_reports_each_raw_file(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_dng(folder / "a.dng", seed=1)
    write_dng(folder / "b.NEF", seed=2)
    (folder / "c.ORF").write_bytes(b"IIRO\x08\x00\x00\x00" + bytes(256))  # Olympus: not TIFF
    Image.fromarray(photo_array((64, 48), seed=3)).save(folder / "d.jpg")
    _no_rawpy(monkeypatch)
    report = ingest(tmp_path / "lib", folder, model=tiny_model)
    assert report["added"] == 1
    reasons = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert reasons == {
        name: f"{kind} RAW file, and RAW support is not installed: {ENABLE_RAW}"
        for name, kind in (("a.dng", "DNG"), ("b.NEF", "NEF"), ("c.ORF", "ORF"))
    }


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
