"""Files that sit beside photos in real folders: Live Photo movies, HEIC bursts and sidecars.

None of them is an image to embed (a burst is one image, its primary), and none is a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.photos import make_photo, photo_array
from tests.test_ingest import ingest, run
from vitdex.embedder import decode_image
from vitdex.embedder.decode import register_plugins
from vitdex.library import Library

BURST_COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
PRIMARY = 1


def write_burst(path: Path) -> Path:
    """A HEIC burst: three frames, the second one marked primary (as cameras mark the pick)."""
    register_plugins()
    frames = [Image.new("RGB", (64, 48), colour) for colour in BURST_COLOURS]
    frames[0].save(path, save_all=True, append_images=frames[1:], primary_index=PRIMARY)
    return path


def write_sidecars(folder: Path) -> list[Path]:
    """The non-images an iPhone, a Canon, Lightroom and Google Takeout leave beside photos."""
    make_photo(folder / "IMG_0003.JPG", (96, 64), seed=3)
    thumb = folder / "IMG_0003.THM"  # a Canon THM is a small JPEG of the photo beside it
    Image.fromarray(photo_array((40, 30), seed=3)).save(thumb, format="JPEG")
    files = {
        "IMG_0001.MOV": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + b"\x00" * 64,
        "IMG_0002.mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42" + b"\x00" * 64,
        "IMG_0001.AAE": b'<?xml version="1.0"?>\n<plist version="1.0"><dict/></plist>\n',
        "IMG_0001.xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>\n',
        "IMG_0003.JPG.json": b'{"title": "IMG_0003.JPG", "photoTakenTime": {"timestamp": "0"}}\n',
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [thumb, *(folder / name for name in files)]


def test_burst_decodes_its_primary_image(tmp_path):
    image, info = decode_image(write_burst(tmp_path / "burst.heic"))
    assert (info.width, info.height, info.format) == (64, 48, "HEIF")
    red, green, blue = image.getpixel((32, 24))
    expected = BURST_COLOURS[PRIMARY]
    assert abs(red - expected[0]) < 20 and abs(green - expected[1]) < 20, (red, green, blue)


def test_live_photo_burst_and_sidecars_are_skipped_quietly(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_burst(folder / "IMG_0001.HEIC")
    write_sidecars(folder)
    report = ingest(tmp_path / "lib", folder, model=tiny_model)
    assert report["failed"] == []
    assert report["added"] == 2
    with Library.open(tmp_path / "lib") as library:
        stored = sorted(Path(image.path).name for image in library.store.images.under())
        assert library.failures() == []
    assert stored == ["IMG_0001.HEIC", "IMG_0003.JPG"]


@pytest.mark.parametrize("name", ["IMG_0003.THM", "IMG_0001.MOV", "IMG_0001.AAE"])
def test_a_sidecar_named_on_the_command_line_is_not_embedded(tmp_path, tiny_model, name):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_sidecars(folder)
    output = run("ingest", folder / name, "--library", tmp_path / "lib", "--model", tiny_model)
    assert "failed" not in output.replace("0 failed", ""), output
    with Library.open(tmp_path / "lib") as library:
        assert list(library.store.images.under()) == []
