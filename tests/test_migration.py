"""A library made by vitdex 0.1 (schema 1, spec keyed on model path and revision) opens, migrates
in one transaction and keeps every image, vector and id."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sqlalchemy import create_engine

from tests.test_ingest import image_rows, ingest, run
from vitdex.embedder import EmbeddingSpec
from vitdex.storage.database import SCHEMA_VERSION, WRITE, upgrade


def pre_alembic_schema(path: Path, version: int) -> None:
    """A SQLite database as vitdex wrote schema `version` before Alembic: the tables, and the
    version in PRAGMA user_version only."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        upgrade(conn.execution_options(**{WRITE: True}), f"{version:04d}")
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql(f"PRAGMA user_version = {version}")
        conn.commit()
    engine.dispose()


def downgrade_to_v1(new: Path, old: Path) -> None:
    """The v2 library `new` rewritten as vitdex 0.1 wrote it: schema 1, text paths, old spec."""
    old.mkdir()
    pre_alembic_schema(old / "vitdex.sqlite", 1)
    with sqlite3.connect(old / "vitdex.sqlite") as conn:
        conn.execute("ATTACH DATABASE ? AS new", (str(new / "vitdex.sqlite"),))
        (spec_json,) = conn.execute("SELECT spec_json FROM new.specs").fetchone()
        data = json.loads(spec_json)
        for key in ("weights", "architecture"):
            data.pop(key, None)
        data["revision"] = "local-0123456789abcdef"
        spec = EmbeddingSpec.from_dict(data)  # no weights: the 0.1 key formula
        conn.execute(
            "INSERT INTO specs SELECT id, ?, model_id, ?, dim, ?, created_at FROM new.specs",
            (spec.key, data["revision"], json.dumps(spec.to_dict())),
        )
        conn.execute("INSERT INTO meta SELECT * FROM new.meta WHERE key = 'generation'")
        conn.execute("INSERT INTO contents SELECT * FROM new.contents")
        conn.execute("INSERT INTO vectors SELECT * FROM new.vectors")
        conn.execute(
            "INSERT INTO images SELECT id, CAST(path AS TEXT), size, mtime_ns, content_id,"
            " generation, added_at FROM new.images"
        )
        conn.commit()
        conn.execute("DETACH DATABASE new")


def test_a_version_1_library_migrates_and_keeps_everything(tiny_model, photo_dir, tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    ingest(new, photo_dir, model=tiny_model)
    downgrade_to_v1(new, old)
    before = image_rows(new)
    report = ingest(old, photo_dir, model=tiny_model)  # same model: the old spec is upgraded
    assert (report["unchanged"], report["added"], report["removed"]) == (4, 0, 0)
    assert image_rows(old) == before
    status = run("status", "--library", old, "--json")
    assert status["schema_version"] == SCHEMA_VERSION and status["spec"]["weights"]
    result = run("search", photo_dir / "photo0.jpg", "--library", old, "--json")
    assert len(result["results"]) == 3
    assert schema_diff(old / "vitdex.sqlite") == []  # migrated: exactly the models' schema


def schema_diff(path: Path) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from vitdex.storage.models import Base

    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diff


def test_a_version_2_library_from_before_alembic_is_stamped_and_keeps_everything(
    tiny_model, photo_dir, tmp_path
):
    new, old = tmp_path / "new", tmp_path / "old"
    ingest(new, photo_dir, model=tiny_model)
    old.mkdir()
    pre_alembic_schema(old / "vitdex.sqlite", 2)
    with sqlite3.connect(old / "vitdex.sqlite") as conn:
        conn.execute("ATTACH DATABASE ? AS new", (str(new / "vitdex.sqlite"),))
        for name in ("meta", "specs", "contents", "vectors", "folders", "images", "generations"):
            conn.execute(f"INSERT OR REPLACE INTO {name} SELECT * FROM new.{name}")
        conn.commit()
    before = image_rows(new)
    report = ingest(old, photo_dir, model=tiny_model)
    assert (report["unchanged"], report["added"], report["removed"]) == (4, 0, 0)
    assert image_rows(old) == before
    with sqlite3.connect(old / "vitdex.sqlite") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (f"{SCHEMA_VERSION:04d}",)
        ]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_one_line(tiny_model, photo_dir, tmp_path):
    lib = tmp_path / "lib"
    ingest(lib, photo_dir, model=tiny_model)
    with sqlite3.connect(lib / "vitdex.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    output = run("status", "--library", lib, expect=1)
    assert "schema 9999 is newer than this vitdex knows" in output
