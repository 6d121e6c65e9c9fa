"""A library in PostgreSQL shared by several machines (here: several library folders on one
database), and what both databases must do alike: the migrated schema is the models' schema,
reads see one snapshot, removals are upserts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from tests.photos import make_photo
from tests.test_ingest import run
from vitdex.library import Library
from vitdex.library.errors import LibraryBusyError
from vitdex.storage import SCHEMA_VERSION
from vitdex.storage.models import Base, Image, Removal


def photos(folder: Path, seeds: range) -> Path:
    for seed in seeds:
        make_photo(folder / f"p{seed}.jpg", size=(96, 72), seed=seed)
    return folder


# --- both databases -------------------------------------------------------------------------------
def test_migrations_make_exactly_the_models_schema(database, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with (
        Library.open(tmp_path / "lib", create=True) as library,
        library.store.engine.connect() as conn,
    ):
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_snapshot_sees_one_moment_while_another_connection_commits(
    database, tiny_model, tmp_path
):
    ingest_dir = photos(tmp_path / "photos", range(3))
    with Library.open(tmp_path / "a", create=True) as writer:
        writer.ingest([ingest_dir], model=str(tiny_model), device="cpu")
    with Library.open(tmp_path / "a") as reader:
        with reader.store.snapshot() as s:
            before = s.scalar(select(func.count()).select_from(Image))
            with Library.open(tmp_path / "a") as writer:  # another engine: another connection
                photos(ingest_dir, range(3, 5))
                assert writer.ingest([ingest_dir]).added == 2
            assert s.scalar(select(func.count()).select_from(Image)) == before == 3
            assert reader.store.state().count == 3
        assert reader.store.state().count == 5


def test_removing_an_image_twice_keeps_the_later_generation(database, tmp_path):
    with Library.open(tmp_path / "lib", create=True) as library:
        library.store.images.remove([7, 8], 1)
        library.store.images.remove([8], 2)
        with library.store.snapshot() as s:
            rows = s.execute(select(Removal.image_id, Removal.generation)).all()
    assert sorted(map(tuple, rows)) == [(7, 1), (8, 2)]


# --- PostgreSQL: one database, several machines ---------------------------------------------------
@pytest.fixture
def shared(postgres_database, monkeypatch) -> str:
    monkeypatch.setenv("VITDEX_DATABASE_URL", postgres_database)
    return postgres_database


def test_an_index_file_from_before_the_database_moved_on_is_stale_elsewhere(
    shared, tiny_model, tmp_path
):
    """Two library folders (two machines) on one database: each keeps its own index files; one
    made before the other machine's ingest is seen as behind, caught up and saved anew."""
    folder = photos(tmp_path / "photos", range(3))
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    run("ingest", folder, "--library", machine_a, "--model", tiny_model, "--json")
    with Library.open(machine_b) as library:
        assert library.index("cls").ntotal == 3
        (file,) = library.indexes.files("cls")
        assert file.generation == 1
    photos(folder, range(3, 5))
    run("ingest", folder, "--library", machine_a, "--json")
    status = run("status", "--library", machine_b, "--json")
    assert status["images"] == 5 and status["index"]["cls"]["up_to_date"] is False
    with Library.open(machine_b) as library:
        index = library.index("cls")
        assert index.ntotal == 5 and sorted(index.ids().tolist()) == [1, 2, 3, 4, 5]
        newest = max(file.generation for file in library.indexes.files("cls"))
        assert newest == library.store.generation() == 2  # saved here (a reader: lock free)
    assert run("status", "--library", machine_b, "--json")["index"]["cls"]["up_to_date"]
    # The other machine's file, copied here, is refused too once this database moves on.
    with Library.open(machine_a) as library:
        library.forget([folder / "p0.jpg"])
    hits = run("search", folder / "p1.jpg", "--library", machine_b, "-k", "9", "--json")
    assert str(folder / "p0.jpg") not in {hit["path"] for hit in hits["results"]}


def test_one_writer_at_a_time_across_machines(shared, tiny_model, tmp_path):
    folder = photos(tmp_path / "photos", range(2))
    with Library.open(tmp_path / "a", create=True) as a, Library.open(tmp_path / "b") as b:
        with a.writing():
            with pytest.raises(LibraryBusyError, match=r"is being written by vitdex \S+ pid"):
                b.ingest([folder], model=str(tiny_model), device="cpu")
            out = run("ingest", folder, "--library", tmp_path / "c", "--model", tiny_model,
                      expect=1)  # fmt: skip
            assert "--wait" in out and "Traceback" not in out
            waited: list[int] = []
            waiter = threading.Thread(
                target=lambda: waited.append(
                    b.ingest([folder], model=str(tiny_model), device="cpu", wait=True).added
                )
            )
            waiter.start()
        waiter.join(timeout=120)
        assert waited == [2]


HOLD = """
import sys, time
from vitdex.library import Library
with Library.open(sys.argv[1]) as library, library.writing():
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_minus_nine_frees_the_lock(shared, tiny_model, tmp_path):
    folder = photos(tmp_path / "photos", range(2))
    with Library.open(tmp_path / "a", create=True) as library:
        library.ingest([folder], model=str(tiny_model), device="cpu")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "elsewhere")],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with Library.open(tmp_path / "b") as library:
            with pytest.raises(LibraryBusyError, match=f"pid {holder.pid}"):
                library.rebuild_index("cls")
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            assert library.rebuild_index("cls", wait=True).ntotal == 2  # the server freed it
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_first_opens_migrate_once(postgres_database, tmp_path):
    script = (
        "import sys\nfrom vitdex.library import Library\n"
        "Library.open(sys.argv[1], database=sys.argv[2], create=True).close()\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / str(i)), postgres_database],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    errors = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    engine = create_engine(postgres_database)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
            (f"{SCHEMA_VERSION:04d}",)
        ]
        assert conn.exec_driver_sql("SELECT count(*) FROM meta WHERE key = 'library_id'").scalar()
    engine.dispose()


def test_database_errors_are_one_line(postgres_database, tmp_path):
    empty = run("status", "--library", tmp_path, "--database", postgres_database, expect=1)
    assert "no vitdex library in" in empty and "Traceback" not in empty
    gone = postgres_database.rsplit("/", 1)[0] + "/no_such_database"
    out = run("status", "--library", tmp_path, "--database", gone, expect=1)
    assert 'database "no_such_database" does not exist' in out and len(out.splitlines()) == 1
    out = run("status", "--library", tmp_path, "--database", "sqlite:///x.db", expect=1)
    assert "only PostgreSQL URLs" in out
    with_password = postgres_database.replace("postgres@", "postgres:secret@")
    out = run("status", "--library", tmp_path, "--database", with_password + "_x", expect=1)
    assert "secret" not in out


@pytest.fixture
def reader_url(shared, postgres_server, tmp_path) -> str:
    """The URL of a role that may read the shared database, not write it."""
    role = f"vitdex_reader_{os.getpid()}"
    Library.open(tmp_path / "setup", create=True).close()  # the tables, before the GRANT
    owner = create_engine(shared, isolation_level="AUTOCOMMIT")
    with postgres_server.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    with owner.connect() as conn:
        conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    yield make_url(shared).set(username=role).render_as_string(hide_password=False)
    with owner.connect() as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {role}")
    owner.dispose()
    with postgres_server.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE {role}")


def test_a_role_that_may_only_read_opens_the_library_read_only(
    shared, reader_url, tiny_model, tmp_path
):
    folder = photos(tmp_path / "photos", range(3))
    run("ingest", folder, "--library", tmp_path / "writer", "--model", tiny_model, "--json")
    reader = tmp_path / "reader"  # another machine, its own folder for index files
    with Library.open(reader, database=reader_url) as library:
        assert library.read_only
        assert library.index("cls").ntotal == 3
        assert [file.generation for file in library.indexes.files("cls")] == [1]  # cached here
    status = run("status", "--library", reader, "--database", reader_url, "--json")
    assert status["read_only"] and status["images"] == 3 and status["index"]["cls"]["up_to_date"]
    text = run("status", "--library", reader, "--database", reader_url)
    assert f"read-only: database role {make_url(reader_url).username} may not write it" in text
    hits = run("search", folder / "p1.jpg", "--library", reader, "--database", reader_url,
               "--json")  # fmt: skip
    assert sorted(hit["path"] for hit in hits["results"]) == [
        str(folder / "p0.jpg"), str(folder / "p2.jpg")
    ]  # fmt: skip
    photos(folder, range(3, 4))
    out = run("ingest", folder, "--library", reader, "--database", reader_url, expect=1)
    assert "read-only" in out and "may not write" in out and len(out.strip().splitlines()) == 1
