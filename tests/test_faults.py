"""Faults and bad input: one clear line, never a hang or a traceback (issue 9, "Faults")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.photos import make_photo
from tests.test_ingest import image_rows, ingest, run
from vitdex.library import Library

VITDEX = [sys.executable, "-m", "vitdex.cli"]


def vitdex(*args, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VITDEX, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def test_a_fifo_or_a_device_is_reported_not_read(tiny_model, photo_dir, lib, tmp_path):
    fifo = photo_dir / "pipe.jpg"
    os.mkfifo(fifo)
    (photo_dir / "zero.jpg").symlink_to("/dev/zero")
    # a real process: a regression hangs on the FIFO or reads /dev/zero forever, and times out
    done = vitdex("ingest", fifo, "--library", lib, "--model", tiny_model, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "FIFO" in done.stdout and "Traceback" not in done.stderr
    done = vitdex("ingest", photo_dir, "--library", lib, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"added": 4' in done.stdout
    assert "character device" in done.stdout and "FIFO" in done.stdout


FIRST = """
import sys
from vitdex.library import Library
with Library.open(sys.argv[1], create=True) as library:
    report = library.ingest([sys.argv[2]], model=sys.argv[3], wait=True)
print(report.added)
"""


def test_two_first_ingests_at_once_both_finish(tiny_model, tmp_path, lib):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(6):
        make_photo((a if seed % 2 else b) / f"p{seed}.jpg", size=(96, 72), seed=seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen([sys.executable, "-c", FIRST, lib, folder, tiny_model], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for folder in (a, b)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300) for process in runs]
    for process, (out, err) in zip(runs, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == "3"
    assert len(image_rows(lib)) == 6


@pytest.fixture
def immutable(tmp_path):
    """Make paths immutable (even root cannot write them); undone at the end."""
    made: list[Path] = []

    def make(*paths: Path) -> None:
        for path in paths:
            if subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
                pytest.skip("chattr +i is not available here")
            made.append(path)

    yield make
    for path in reversed(made):
        subprocess.run(["chattr", "-i", path], check=True)


def test_a_read_only_library_can_be_read(tiny_model, photo_dir, lib, immutable):
    ingest(lib, photo_dir, model=tiny_model)
    with Library.open(lib) as library:  # a clean close: no -wal left to replay
        library.status()
    files = sorted(p for p in lib.rglob("*") if p.is_file())
    immutable(*files, *sorted(p for p in lib.rglob("*") if p.is_dir()), lib)
    status = run("status", "--library", lib, "--json")
    assert status["read_only"] and status["images"] == 4
    result = run("search", photo_dir / "photo0.jpg", "--library", lib, "--json")
    assert len(result["results"]) == 3
    make_photo(photo_dir / "new.jpg", seed=40)
    out = run("ingest", photo_dir, "--library", lib, expect=1)
    assert "read-only" in out and "Traceback" not in out
    from vitdex.web.app import create_app

    with Library.open(lib) as library:
        from starlette.testclient import TestClient

        assert TestClient(create_app(library)).get("/").status_code == 200


def test_a_corrupt_database_is_one_line(lib, tmp_path):
    lib.mkdir()
    (lib / "vitdex.sqlite").write_bytes(b"this is not a database" * 100)
    out = run("status", "--library", lib, expect=1)
    assert out.startswith("Error:") and "not a readable vitdex database" in out
    assert len(out.strip().splitlines()) == 1


def test_a_library_path_that_is_a_file_is_one_line(tmp_path):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    done = vitdex("status", env={"VITDEX_LIBRARY": str(file)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "is a file, not a library folder" in done.stderr


def test_a_full_disk_is_one_line(tiny_model, photo_dir, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", mount],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here")
    try:
        done = vitdex("ingest", photo_dir, "--library", mount / "lib", "--model", tiny_model)
    finally:
        subprocess.run(["umount", mount], check=True)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("Error:") and "free some disk space" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
