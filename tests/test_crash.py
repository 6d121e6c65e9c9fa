"""kill -9 in the middle of an ingest: the database (SQLite or PostgreSQL) and FAISS stay
consistent, the next run finishes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.pool import NullPool

from tests.photos import make_photo
from vitdex.library import Library

pytestmark = pytest.mark.usefixtures("database")  # on SQLite and on PostgreSQL

PHOTOS = 160
SCRIPT = """
import sys
from vitdex.library import Library
with Library.open(sys.argv[1], create=True) as library:
    library.ingest([sys.argv[2]], model=sys.argv[3], batch_size=2, commit_every=2)
"""


def stored_count(lib: Path) -> int:
    if url := os.environ.get("VITDEX_DATABASE_URL"):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM images")).scalar_one()
        except exc.ProgrammingError:
            return 0  # not created yet
        finally:
            engine.dispose()
    db = lib / "vitdex.sqlite"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # not created yet


def ingest_and_kill(lib: Path, photos: Path, model: Path, at_least: int) -> int:
    """Start a real ingest process and SIGKILL it once `at_least` images are committed."""
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(lib), str(photos), str(model)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if stored_count(lib) >= at_least:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the ingest ended before it could be killed"
    return stored_count(lib)


def test_kill_minus_nine_mid_ingest_then_resume(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    for seed in range(PHOTOS):
        make_photo(photos / f"{seed // 40}" / f"p{seed}.jpg", size=(96, 72), seed=seed)
    lib = tmp_path / "lib"

    first = ingest_and_kill(lib, photos, tiny_model, at_least=1)
    second = ingest_and_kill(lib, photos, tiny_model, at_least=first + 10)
    assert 0 < first < second < PHOTOS

    if (lib / "vitdex.sqlite").exists():
        with sqlite3.connect(lib / "vitdex.sqlite") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    with Library.open(lib) as library:
        # a search during the aftermath already sees every committed image
        assert library.index("cls").ntotal == second
        report = library.ingest([photos])
        assert report.added == PHOTOS - second and report.unchanged == second
        assert report.failed == [] and report.removed == 0
        images = list(library.store.images.under())
        paths = [image.path for image in images]
        assert len(paths) == len(set(paths)) == PHOTOS
        assert library.store.images.count_contents() == PHOTOS
        db_ids = sorted(image.id for image in images)
        from vitdex.index.vector_index import VectorIndex

        for feature in ("cls", "mean"):  # the ingest brings every stored feature up to date
            (file,) = library.indexes.files(feature)
            assert file.generation == library.store.generation()
            assert sorted(VectorIndex.load(file.path).ids().tolist()) == db_ids
        again = library.ingest([photos])
        assert (again.added, again.unchanged) == (0, PHOTOS)
