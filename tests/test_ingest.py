"""Ingest: incremental, move-aware, hostile files, dry runs, locking."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli.main import main
from vitdex.library import Library
from vitdex.library.errors import LibraryBusyError
from vitdex.library.lock import write_lock

pytestmark = pytest.mark.usefixtures("database")  # each test on SQLite and on PostgreSQL


def run(*args: str, expect: int = 0) -> dict | str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    if "--json" in args and expect == 0:
        return json.loads(result.stdout)
    return result.output


def ingest(library: Path, *paths, model: Path | None = None, extra: tuple = ()) -> dict:
    model_args = ("--model", model) if model else ()
    return run("ingest", *paths, "--library", library, *model_args, "--json", *extra)


def image_rows(library: Path) -> dict[str, tuple[int, int]]:
    with Library.open(library) as lib:
        return {image.path: (image.id, image.content_id) for image in lib.store.images.under()}


def index_ids(library: Path, feature: str = "cls") -> list[int]:
    with Library.open(library) as lib:
        return sorted(int(i) for i in lib.index(feature).ids())


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def test_first_ingest_stores_metadata_vectors_and_index(tiny_model, photo_dir, lib):
    make_photo(
        photo_dir / "camera.jpg",
        (300, 200),
        seed=11,
        exif=_exif(make="Acme", model="Snap 9", taken="2021:06:01 10:20:30"),
    )
    report = ingest(lib, photo_dir, model=tiny_model)
    assert report["added"] == 5 and report["failed"] == []
    with Library.open(lib) as library:
        image = library.store.images.at_path(str(photo_dir / "camera.jpg"))
        assert (image.width, image.height, image.format) == (300, 200, "JPEG")
        assert (image.camera_make, image.camera_model) == ("Acme", "Snap 9")
        assert image.taken_at.startswith("2021-06-01T10:20:30")
        assert image.size == (photo_dir / "camera.jpg").stat().st_size
        assert len(image.sha256) == 64
        spec = library.require_spec()
        for feature in ("cls", "mean"):
            found, _ = library.store.vectors.of_image_ids(spec, feature, [image.id])
            assert found.tolist() == [image.id]
    assert index_ids(lib) == sorted(i for i, _ in image_rows(lib).values())


def test_rescan_opens_no_unchanged_file_and_loads_no_model(tiny_model, photo_dir, lib, monkeypatch):
    ingest(lib, photo_dir, model=tiny_model)
    opened = []
    import vitdex.library.plan as plan_module

    monkeypatch.setattr(plan_module, "file_sha256", lambda p: opened.append(p))
    with Library.open(lib) as library:
        report = library.ingest([photo_dir])
        assert library._embedder is None  # nothing to embed: the model is never loaded
    assert (report.unchanged, report.added, report.updated) == (4, 0, 0)
    assert opened == []


def test_changed_file_is_re_embedded_in_place(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    before = image_rows(lib)[str(photo_dir / "photo1.jpg")]
    make_photo(photo_dir / "photo1.jpg", (320, 240), seed=99)
    report = ingest(lib, photo_dir)
    assert (report["updated"], report["added"], report["unchanged"]) == (1, 0, 3)
    after = image_rows(lib)[str(photo_dir / "photo1.jpg")]
    assert after[0] == before[0] and after[1] != before[1]
    with Library.open(lib) as library:
        assert library.store.images.count() == 4
        assert library.store.images.count_contents() == 4  # the old content, unused, is gone
    result = run("search", photo_dir / "photo1.jpg", "--library", lib, "--json")
    assert len(result["results"]) == 3


def test_touched_file_is_unchanged(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    os.utime(photo_dir / "photo0.jpg", ns=(1, 10**18))
    report = ingest(lib, photo_dir)
    assert (report["unchanged"], report["updated"]) == (4, 0)


def test_moved_and_renamed_files_keep_their_id_and_vectors(tiny_model, photo_dir, lib, monkeypatch):
    ingest(lib, photo_dir, model=tiny_model)
    before = image_rows(lib)
    (photo_dir / "album").mkdir()
    shutil.move(photo_dir / "photo0.jpg", photo_dir / "album" / "renamed.jpg")
    shutil.move(photo_dir / "drawing.png", photo_dir / "drawing-2.png")
    with Library.open(lib) as library:
        report = library.ingest([photo_dir])
        assert library._embedder is None  # a move is never re-embedded
    assert (report.moved, report.added, report.removed) == (2, 0, 0)
    after = image_rows(lib)
    assert after[str(photo_dir / "album" / "renamed.jpg")] == before[str(photo_dir / "photo0.jpg")]
    assert after[str(photo_dir / "drawing-2.png")] == before[str(photo_dir / "drawing.png")]
    assert index_ids(lib) == sorted(i for i, _ in after.values())


def test_deleted_file_leaves_library_and_index(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    gone_id = image_rows(lib)[str(photo_dir / "photo2.jpg")][0]
    (photo_dir / "photo2.jpg").unlink()
    report = ingest(lib, photo_dir)
    assert report["removed"] == 1
    assert str(photo_dir / "photo2.jpg") not in image_rows(lib)
    assert gone_id not in index_ids(lib)
    with Library.open(lib) as library:
        assert library.store.images.count_contents() == 3


def test_identical_copies_are_two_images_computed_once(tiny_model, photo_dir, lib, monkeypatch):
    shutil.copy(photo_dir / "photo0.jpg", photo_dir / "copy-of-photo0.jpg")
    ingest(lib, photo_dir, model=tiny_model)
    rows = image_rows(lib)
    assert len(rows) == 5
    assert rows[str(photo_dir / "photo0.jpg")][1] == rows[str(photo_dir / "copy-of-photo0.jpg")][1]
    with Library.open(lib) as library:
        assert library.store.images.count_contents() == 4
    # a later copy of a stored photo is linked, not embedded
    shutil.copy(photo_dir / "photo1.jpg", photo_dir / "later-copy.jpg")
    with Library.open(lib) as library:
        report = library.ingest([photo_dir])
        assert report.added == 1 and library._embedder is None
    assert len(index_ids(lib)) == 6


def test_dry_run_changes_nothing(tiny_model, photo_dir, lib, database):
    ingest(lib, photo_dir, model=tiny_model)
    make_photo(photo_dir / "new.jpg", seed=42)
    (photo_dir / "photo0.jpg").unlink()
    before = _database_contents(lib, database)
    report = ingest(lib, photo_dir, extra=("--dry-run",))
    assert (report["added"], report["removed"], report["dry_run"]) == (1, 1, True)
    assert len(image_rows(lib)) == 4
    assert _database_contents(lib, database) == before


def _database_contents(lib: Path, database: str | None) -> object:
    """The SQLite file's bytes, or every row of every table of the PostgreSQL database."""
    if database is None:
        return (lib / "vitdex.sqlite").read_bytes()
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(database)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted(map(tuple, conn.execute(select(table))), key=repr)
                for name, table in metadata.tables.items()
            }
    finally:
        engine.dispose()


def _exif(make: str, model: str, taken: str) -> bytes:
    from PIL import Image as PILImage

    exif = PILImage.Exif()
    exif[0x010F], exif[0x0110] = make, model
    exif.get_ifd(0x8769)[0x9003] = taken
    return exif.tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_hostile_files_are_reported_recorded_and_never_stop_the_run(tiny_model, photo_dir, lib):
    bad = photo_dir / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    good_bytes = (photo_dir / "photo0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good_bytes[: len(good_bytes) // 3])
    (bad / "random.png").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "notes.jpg").write_text("these are my holiday notes, not a photo\n")
    (bad / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (bad / "folder.jpg").mkdir()
    make_photo(bad / "folder.jpg" / "inside.jpg", seed=5)
    (bad / "readme.txt").write_text("not an image, not named like one: ignored")
    make_photo(bad / "jpeg-without-suffix.dat", seed=6, format="JPEG")

    report = ingest(lib, photo_dir, model=tiny_model)
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {
        "empty.jpg",
        "truncated.jpg",
        "random.png",
        "notes.jpg",
        "bomb.png",
        "folder.jpg",
    }
    for name, error in failed.items():
        assert error and "\n" not in error and str(bad) not in error, (name, error)
    assert "empty" in failed["empty.jpg"].lower()
    assert "folder" in failed["folder.jpg"]
    assert "bomb" in failed["bomb.png"].lower() or "pixels" in failed["bomb.png"].lower()
    assert report["added"] == 6  # 4 photos + the one inside folder.jpg + the JPEG named .dat
    with Library.open(lib) as library:
        assert {f.path for f in library.failures()} == {str(bad / n) for n in failed}
    status = run("status", "--library", lib, "--json")
    assert {Path(f["path"]).name for f in status["failed"]} == set(failed)
    # unchanged bad files are not retried; a fixed one is ingested and leaves the failure list
    make_photo(bad / "notes.jpg", seed=8)
    again = ingest(lib, photo_dir)
    assert again["failed"] == [] and again["added"] == 1
    assert "notes.jpg" not in {
        Path(f["path"]).name for f in run("status", "--library", lib, "--json")["failed"]
    }


def test_symlink_loops_and_broken_links_do_not_hang(tiny_model, photo_dir, lib):
    (photo_dir / "loop").symlink_to(photo_dir)
    (photo_dir / "dangling.jpg").symlink_to(photo_dir / "nowhere.jpg")
    report = ingest(lib, photo_dir, model=tiny_model)
    assert report["added"] == 4


def test_corrupted_stored_image_keeps_its_vector(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    before = image_rows(lib)[str(photo_dir / "photo0.jpg")]
    (photo_dir / "photo0.jpg").write_bytes(b"garbage")
    report = ingest(lib, photo_dir)
    assert [Path(f["path"]).name for f in report["failed"]] == ["photo0.jpg"]
    assert image_rows(lib)[str(photo_dir / "photo0.jpg")] == before


def test_second_ingest_fails_clearly_while_search_keeps_working(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    with write_lock(lib):
        out = run("ingest", photo_dir, "--library", lib, expect=1)
        assert "being written" in out and "--wait" in out
        result = run("search", photo_dir / "photo0.jpg", "--library", lib, "--json")
        assert len(result["results"]) == 3
    with Library.open(lib) as library, write_lock(lib), pytest.raises(LibraryBusyError):
        library.ingest([photo_dir])


def test_missing_path_is_an_error(lib, tmp_path):
    out = run("ingest", tmp_path / "nope", "--library", lib, expect=1)
    assert "nope" in out and "no such" in out


def test_other_model_on_a_library_is_refused(tiny_model, tiny_model_with_pooler, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    out = run("ingest", photo_dir, "--library", lib, "--model", tiny_model_with_pooler, expect=1)
    assert "--library" in out and "never mix" in out
