"""Paths that are not regular files: a FIFO or a device must be refused, never read.

Each case runs in a subprocess with a timeout, so a regression (a read that blocks on a FIFO
with no writer, or reads /dev/zero forever) fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from tests.photos import make_photo
from vitdex.embedder import DecodeError, decode_image, sniff_image_format

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import sys
from vitdex.embedder import DecodeError, decode_image, sniff_image_format
call = {"sniff": sniff_image_format, "decode": decode_image}[sys.argv[1]]
try:
    call(sys.argv[2])
except DecodeError as exc:
    print("DecodeError:" + str(exc))
else:
    print("accepted")
"""


def _run(function: str, path: Path) -> str:
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, function, str(path)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{function} of {path} blocked (it read a FIFO or a device)")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def fifo(tmp_path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "x.jpg"
    os.mkfifo(path)
    return path


@pytest.fixture
def dev_zero_link(tmp_path) -> Path:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero on this platform")
    path = tmp_path / "zero.jpg"
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("function", ["sniff", "decode"])
def test_fifo_is_refused_without_blocking(fifo, function):
    assert _run(function, fifo) == f"DecodeError:{fifo}: not a regular file (FIFO)"


@pytest.mark.parametrize("function", ["sniff", "decode"])
def test_device_link_is_refused_without_reading(dev_zero_link, function):
    expected = f"DecodeError:{dev_zero_link}: not a regular file (character device)"
    assert _run(function, dev_zero_link) == expected


def test_regular_files_still_read(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg", size=(64, 48))
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)  # a symlink to a regular file is a regular file
    assert sniff_image_format(link) == "JPEG"
    image, info = decode_image(link)
    assert image.size == (64, 48) and info.format == "JPEG"
    assert sniff_image_format(tmp_path / "missing.jpg") is None


def test_directory_is_refused_by_sniff_and_decode(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    for call in (sniff_image_format, decode_image):
        with pytest.raises(DecodeError, match=r"not a regular file \(directory\)"):
            call(folder)


def test_bomb_guard_touches_no_global_warnings_state(tmp_path, monkeypatch):
    """Decode threads must not switch warning filters: that state is global, not per thread."""

    def forbidden(*args, **kwargs):
        raise AssertionError("decode changed the global warnings state")

    photo = make_photo(tmp_path / "big.png", size=(320, 240))  # 76,800 pixels
    with monkeypatch.context() as patch:  # undone before pytest's own catch_warnings runs
        for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
            patch.setattr(warnings, name, forbidden)
        image, _info = decode_image(photo)
        assert image.size == (320, 240)
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # the warning zone (1x to 2x)
        with pytest.raises(DecodeError, match="decompression bomb") as caught:
            decode_image(photo)
        assert "76800 pixels" in str(caught.value) and "50000" in str(caught.value)
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 76_800)  # exactly the limit is accepted
        assert decode_image(photo)[0].size == (320, 240)
