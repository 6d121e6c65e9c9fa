"""The index manager: an index file is used only when it belongs to this database's history,
catches up in one snapshot, and only writers save (issue 9, "Index consistency")."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.photos import make_photo
from tests.test_ingest import image_rows, ingest, run
from vitdex.library import Library


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def photos(folder: Path, seeds: range, size=(96, 72)) -> Path:
    for seed in seeds:
        make_photo(folder / f"p{seed}.jpg", size=size, seed=seed)
    return folder


def exact_scores(library: Library, query_id: int, feature: str = "cls") -> dict[int, float]:
    ids, vectors = library.store.vectors.of_images(library.require_spec(), feature)
    query = vectors[list(ids).index(query_id)]
    return dict(zip(ids.tolist(), (vectors @ query).tolist(), strict=True))


def assert_answers_from_the_database(lib: Path, query: Path) -> None:
    result = run("search", query, "--library", lib, "--json", "-k", "3")
    with Library.open(lib) as library:
        query_id = library.images_at([str(query)])[str(query)].id
        exact = exact_scores(library, query_id)
    for hit in result["results"]:
        assert hit["score"] == pytest.approx(exact[hit["id"]], abs=1e-5)


def test_a_recreated_database_never_answers_from_the_old_index(tiny_model, tmp_path, lib):
    a = photos(tmp_path / "a", range(4))
    ingest(lib, a, model=tiny_model)
    for name in ("vitdex.sqlite", "vitdex.sqlite-wal", "vitdex.sqlite-shm"):
        (lib / name).unlink(missing_ok=True)  # the database is gone, index/ stays
    b = photos(tmp_path / "b", range(10, 14))
    ingest(lib, b, model=tiny_model)  # the same number of images, other vectors
    status = run("status", "--library", lib, "--json")
    assert status["index"]["cls"]["up_to_date"]
    assert_answers_from_the_database(lib, b / "p10.jpg")


def test_a_restored_database_is_not_answered_from_a_later_index(tiny_model, tmp_path, lib):
    a = photos(tmp_path / "a", range(3))
    ingest(lib, a, model=tiny_model)
    backup = tmp_path / "backup.sqlite"
    source, copy = sqlite3.connect(lib / "vitdex.sqlite"), sqlite3.connect(backup)
    source.backup(copy)  # a consistent copy, as a backup tool would take it
    source.close()
    copy.close()
    with Library.open(lib) as library:
        generation = library.store.generation()
    ingest(lib, photos(tmp_path / "a", range(3, 5)))  # the index moves on
    for name in ("vitdex.sqlite-wal", "vitdex.sqlite-shm"):
        (lib / name).unlink(missing_ok=True)
    shutil.copy(backup, lib / "vitdex.sqlite")  # restore
    # the restored database reaches the same generation with other images
    (tmp_path / "a" / "p3.jpg").unlink()
    (tmp_path / "a" / "p4.jpg").unlink()
    c = photos(tmp_path / "c", range(20, 22))
    with Library.open(lib) as library:
        library.ingest([c])
        assert library.store.generation() == generation + 1
        before = library.indexes.builds
        index = library.index("cls")
        assert sorted(index.ids().tolist()) == sorted(i for i, _ in image_rows(lib).values())
        assert library.indexes.builds == before  # the ingest already rebuilt it, once
    assert_answers_from_the_database(lib, c / "p20.jpg")


SEARCHER = """
import sys, time
from vitdex.library import Library
lib, query, done = sys.argv[1], sys.argv[2], sys.argv[3]
import os
generations = set()
with Library.open(lib) as library:
    while not os.path.exists(done):
        library.search(query, k=3)
        generations.add(library.store.generation())
    library.search(query, k=3)
    print(library.indexes.builds, len(generations))
"""

INGESTER = """
import sys
from vitdex.library import Library
with Library.open(sys.argv[1]) as library:
    library.ingest([sys.argv[2]], batch_size=2, commit_every=2)
open(sys.argv[3], "w").close()
"""


def test_a_search_during_a_real_ingest_never_rebuilds(tiny_model, tmp_path, lib):
    folder = photos(tmp_path / "photos", range(4))
    ingest(lib, folder, model=tiny_model)
    photos(folder, range(4, 100))
    done = tmp_path / "done"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ingester = subprocess.Popen([sys.executable, "-c", INGESTER, lib, folder, done], env=env)
    searcher = subprocess.run(
        [sys.executable, "-c", SEARCHER, lib, folder / "p0.jpg", done],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ingester.wait(timeout=600) == 0
    assert searcher.returncode == 0, searcher.stderr
    builds, generations = map(int, searcher.stdout.split())
    assert generations >= 2  # it searched while the ingest committed batches
    assert builds == 0  # ... and only ever loaded and caught up, never rebuilt


def test_a_rescan_with_nothing_changed_touches_no_index_file(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    index_folder = lib / "index"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in index_folder.iterdir()}
    with Library.open(lib) as library:
        generation = library.store.generation()
    os.utime(photo_dir / "photo0.jpg", ns=(1, 10**18))  # touched, same content
    report = ingest(lib, photo_dir)
    assert (report["unchanged"], report["added"]) == (4, 0)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in index_folder.iterdir()}
    assert after == before
    with Library.open(lib) as library:
        assert library.store.generation() == generation


def test_a_failed_rebuild_changes_nothing(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    out = run("index", "rebuild", "--library", lib, "--type", "ivfpq", expect=1)
    assert "Error:" in out and "Traceback" not in out and len(out.strip().splitlines()) == 1
    status = run("status", "--library", lib, "--json")
    assert status["index"]["cls"]["preferred"] == "auto" and status["index"]["cls"]["up_to_date"]
    make_photo(photo_dir / "new.jpg", seed=50)
    assert ingest(lib, photo_dir)["added"] == 1
    assert len(run("search", photo_dir / "new.jpg", "--library", lib, "--json")["results"]) == 4


def test_files_of_a_later_generation_and_temp_files_are_cleaned_by_the_next_writer(
    tiny_model, photo_dir, lib
):
    ingest(lib, photo_dir, model=tiny_model)
    folder = lib / "index"
    (current,) = sorted(folder.glob("cls.g*.faiss"))
    future = folder / "cls.g999.faiss"
    shutil.copy(current, future)
    shutil.copy(str(current) + ".json", str(future) + ".json")
    temp = folder / "cls.g7.faiss.tmp-123-0123456789abcdef"
    temp.write_bytes(b"x" * 1000)
    with Library.open(lib) as library:
        library.search(photo_dir / "photo0.jpg")
        assert library.indexes.builds == 0  # a reader skips the foreign file, no rebuild
    assert future.exists()  # readers never delete
    make_photo(photo_dir / "new.jpg", seed=51)
    ingest(lib, photo_dir)
    assert not future.exists() and not temp.exists()
    assert len(list(folder.glob("cls.g*.faiss"))) == 1


def test_every_stored_feature_is_indexed_by_the_ingest(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    with Library.open(lib) as library:
        for feature in ("cls", "mean"):
            (file,) = library.indexes.files(feature)
            assert file.generation == library.store.generation()
        library.search(photo_dir / "photo0.jpg", feature="mean")
        assert library.indexes.builds == 0  # the first mean search builds nothing


def test_a_read_only_index_folder_is_one_clear_line(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    folder = lib / "index"
    if subprocess.run(["chattr", "+i", folder], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        make_photo(photo_dir / "new.jpg", seed=52)
        out = run("ingest", photo_dir, "--library", lib, expect=1)
        assert "cannot write the cls index" in out and "Traceback" not in out
        assert np.isclose(
            run("search", photo_dir / "new.jpg", "--library", lib, "--json")["results"][0]["score"],
            run("search", photo_dir / "new.jpg", "--library", lib, "--json")["results"][0]["score"],
        )
        assert len(run("search", photo_dir / "new.jpg", "--library", lib, "--json")["results"]) == 4
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)
