"""The ingest report says what was committed, and a dry run says what a real run would do
(issue 9, "Reports")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_ingest import image_rows, ingest, run


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def test_identical_undecodable_files_are_two_failures_not_an_addition(tiny_model, photo_dir, lib):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG" * 10)
    shutil.copy(photo_dir / "broken.jpg", photo_dir / "broken-copy.jpg")
    report = ingest(lib, photo_dir, model=tiny_model)
    assert report["added"] == 4
    assert sorted(Path(f["path"]).name for f in report["failed"]) == [
        "broken-copy.jpg", "broken.jpg",
    ]  # fmt: skip
    assert len(image_rows(lib)) == 4
    status = run("status", "--library", lib, "--json")
    assert sorted(Path(f["path"]).name for f in status["failed"]) == [
        "broken-copy.jpg", "broken.jpg",
    ]  # fmt: skip
    again = ingest(lib, photo_dir)  # failed earlier, unchanged since: counted, not hidden
    assert again["failed"] == [] and len(again["failed_earlier"]) == 2
    text = run("ingest", photo_dir, "--library", lib)
    assert "2 failed earlier" in text


def test_a_dry_run_after_a_move_reports_what_the_real_run_does(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    (photo_dir / "album").mkdir()
    shutil.move(photo_dir / "photo0.jpg", photo_dir / "album" / "photo0.jpg")
    planned = ingest(lib, photo_dir, extra=("--dry-run",))
    done = ingest(lib, photo_dir)
    keys = ("added", "updated", "moved", "unchanged", "removed")
    assert {k: planned[k] for k in keys} == {k: done[k] for k in keys}
    assert (done["moved"], done["removed"]) == (1, 0)


def test_pooler_is_refused_even_when_nothing_needs_embedding(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    out = run("ingest", photo_dir, "--library", lib, "--feature", "pooler", expect=1)
    assert "no trained pooler" in out
