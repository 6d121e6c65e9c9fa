"""One identity per real file: every spelling of a path is one image, names that are not UTF-8
are kept, and `under` is a case-sensitive range on the path index (issue 9, "Identity")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.photos import make_photo
from tests.test_ingest import image_rows, ingest, run
from vitdex.library import Library


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def test_other_spellings_of_a_folder_are_the_same_images(tiny_model, photo_dir, lib, tmp_path):
    ingest(lib, photo_dir, model=tiny_model)
    before = image_rows(lib)
    dotted = f"{photo_dir}/../{photo_dir.name}"
    assert ingest(lib, dotted)["added"] == 0
    link = tmp_path / "link-to-photos"
    link.symlink_to(photo_dir)
    report = ingest(lib, link)
    assert (report["added"], report["unchanged"], report["removed"]) == (0, 4, 0)
    assert image_rows(lib) == before


def test_a_file_symlink_beside_its_target_is_one_image(tiny_model, photo_dir, lib):
    (photo_dir / "alias.jpg").symlink_to(photo_dir / "photo0.jpg")
    report = ingest(lib, photo_dir, model=tiny_model)
    assert report["added"] == 4
    assert sorted(Path(p).name for p in image_rows(lib)) == [
        "drawing.png", "photo0.jpg", "photo1.jpg", "photo2.jpg",
    ]  # fmt: skip
    # the symlink given by name is its target, already stored
    assert ingest(lib, photo_dir / "alias.jpg")["added"] == 0


def test_the_same_path_twice_in_one_command(tiny_model, photo_dir, lib):
    report = ingest(lib, photo_dir, photo_dir, photo_dir / "photo1.jpg", model=tiny_model)
    assert report["added"] == 4 and report["failed"] == []
    again = ingest(lib, photo_dir, photo_dir)  # a rerun works too (it used to crash each time)
    assert (again["added"], again["unchanged"]) == (0, 4)
    assert len(image_rows(lib)) == 4


def test_a_name_that_is_not_utf8_is_kept_and_shown(tiny_model, photo_dir, lib):
    raw = os.fsencode(photo_dir) + b"/caf\xe9 \xff.jpg"
    shutil.copy(photo_dir / "photo1.jpg", raw)  # a copy: linked to the same content
    make_photo(Path(os.fsdecode(os.fsencode(photo_dir) + b"/new\xfe.jpg")), seed=21)
    report = ingest(lib, photo_dir, model=tiny_model)
    assert report["added"] == 6 and report["failed"] == []
    stored = image_rows(lib)
    assert os.fsdecode(raw) in stored  # the exact bytes come back
    assert os.fsencode(next(p for p in stored if "caf" in p)) == raw
    again = ingest(lib, photo_dir)
    assert (again["added"], again["unchanged"]) == (0, 6)
    text = run("search", Path(os.fsdecode(raw)), "--library", lib, "-k", "6")
    assert "new\ufffd.jpg" in text  # shown with a replacement character, never an error


def test_under_is_a_case_sensitive_range_on_the_path_index(tiny_model, tmp_path, lib):
    for name in ("Photos", "photos", "photos-2"):
        make_photo(tmp_path / name / "a.jpg", seed=len(name))
    ingest(lib, tmp_path / "Photos", tmp_path / "photos", tmp_path / "photos-2", model=tiny_model)
    with Library.open(lib) as library:
        images = library.store.images
        assert images.count(under=str(tmp_path / "photos")) == 1
        assert images.count(under=str(tmp_path / "Photos")) == 1
        assert images.count(under=str(tmp_path)) == 3
        from sqlalchemy import func, select

        from vitdex.storage.images import _under
        from vitdex.storage.models import Image

        query = (
            select(func.count())
            .select_from(Image)
            .where(_under(Image.path, str(tmp_path / "photos")))
        )
        compiled = query.compile(library.store.engine, compile_kwargs={"literal_binds": True})
        with library.store.engine.connect() as conn:
            plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
    assert "SEARCH" in plan and "path" in plan, plan  # a range on the index, not a scan


def test_moving_the_model_folder_keeps_the_library(tiny_model, photo_dir, lib, tmp_path):
    copy = tmp_path / "models" / "moved-vit"
    shutil.copytree(tiny_model, copy)
    ingest(lib, photo_dir, model=copy)
    moved = tmp_path / "elsewhere" / "vit"
    moved.parent.mkdir()
    copy.rename(moved)
    make_photo(photo_dir / "later.jpg", seed=30)
    report = ingest(lib, photo_dir, model=moved)  # same weights and preprocessing: same spec
    assert report["added"] == 1
