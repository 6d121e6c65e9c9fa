"""Opening a library database: engine, pragmas, write transactions, schema version, migrations.

Every transaction is explicit. Reads see one snapshot (WAL). Writes start with `BEGIN IMMEDIATE`,
so a writer takes the database's write lock before it reads anything it will change, and waits
(busy_timeout) while another writer holds it instead of failing half-way. A library whose files
cannot be written is opened read-only: status, search and serve work, writes are refused.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.pool import NullPool

from vitdex.storage import files
from vitdex.storage.errors import StorageError
from vitdex.storage.models import Base, Folder, Generation

log = logging.getLogger(__name__)

DATABASE_NAME = "vitdex.sqlite"
BUSY_TIMEOUT_MS = 60_000
SETUP_LOCK_NAME = "setup.lock"
WRITE = "vitdex_write"  # execution option: this connection's transactions begin as writes


def _create_v1(conn: Connection) -> None:
    # The first schema, as it shipped: kept so a v1 database and a new one take the same steps.
    for statement in _V1_IMAGES_AND_FAILURES:
        conn.exec_driver_sql(statement)
    Base.metadata.create_all(
        conn,
        tables=[t for t in Base.metadata.sorted_tables if t.name in _V1_OTHER_TABLES],
    )


_V1_OTHER_TABLES = {"meta", "specs", "contents", "vectors", "probes", "predictions"}
_V1_IMAGES_AND_FAILURES = (
    "CREATE TABLE images (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL,"
    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content_id INTEGER NOT NULL"
    " REFERENCES contents (id), generation INTEGER NOT NULL, added_at DATETIME NOT NULL,"
    " UNIQUE (path))",
    "CREATE TABLE failures (path TEXT NOT NULL PRIMARY KEY, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, error TEXT NOT NULL, failed_at DATETIME NOT NULL)",
)


def _v2_identity(conn: Connection) -> None:
    """Paths as raw bytes with device and inode, a folder table, the generation log, removals,
    and a library id. Old rows keep their paths; device and inode are read where files exist."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_images_content_id")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_images_generation")
    conn.exec_driver_sql("ALTER TABLE images RENAME TO images_v1")
    conn.exec_driver_sql("ALTER TABLE failures RENAME TO failures_v1")
    new = {"images", "failures", "folders", "generations", "removals"}
    Base.metadata.create_all(conn, tables=[t for t in Base.metadata.sorted_tables if t.name in new])
    folder_ids: dict[bytes, int] = {}
    rows = conn.exec_driver_sql(
        "SELECT id, path, size, mtime_ns, content_id, generation, added_at FROM images_v1"
    ).all()
    for row in rows:
        path = row.path
        folder = files.to_db(os.path.dirname(path))
        if folder not in folder_ids:
            folder_ids[folder] = conn.execute(
                Folder.__table__.insert().values(path=folder).returning(Folder.id)
            ).scalar_one()
        try:
            st = os.stat(path)
            device, inode = st.st_dev, st.st_ino
        except OSError:
            device = inode = 0
        conn.exec_driver_sql(
            "INSERT INTO images (id, path, folder_id, device, inode, size, mtime_ns, content_id,"
            " generation, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, files.to_db(path), folder_ids[folder], device, inode, row.size,
             row.mtime_ns, row.content_id, row.generation, row.added_at),
        )  # fmt: skip
    conn.exec_driver_sql(
        "INSERT INTO failures SELECT CAST(path AS BLOB), size, mtime_ns, error, failed_at"
        " FROM failures_v1"
    )
    conn.exec_driver_sql("DROP TABLE images_v1")
    conn.exec_driver_sql("DROP TABLE failures_v1")
    generation = conn.exec_driver_sql(
        "SELECT value FROM meta WHERE key = 'generation'"
    ).scalar_one_or_none()
    if generation is not None:
        conn.execute(
            Generation.__table__.insert().values(generation=int(generation), token=uuid.uuid4().hex)
        )
    conn.exec_driver_sql(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('library_id', ?)", (uuid.uuid4().hex,)
    )


# Schema version N is reached by running MIGRATIONS[N - 1]; append, never edit.
MIGRATIONS: list[Callable[[Connection], None]] = [_create_v1, _v2_identity]
SCHEMA_VERSION = len(MIGRATIONS)


PAGE_SIZE = 16384


def _on_connect(dbapi_connection, _record, *, read_only: bool) -> None:
    # busy_timeout first: every later statement, the journal mode switch included, then waits
    # for another process's lock instead of failing with "database is locked".
    dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, runs transactions
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if not read_only:
        # 16 KB pages hold five 3 KB vector blobs where 4 KB pages hold one: 20% smaller files
        # (docs/benchmarks.md, "Index on disk"). Only a new, empty database takes it.
        cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def database_path(folder: Path) -> Path:
    return Path(folder) / DATABASE_NAME


def is_read_only(folder: Path) -> bool:
    path = database_path(folder)
    return not (os.access(folder, os.W_OK) and os.access(path, os.W_OK))


def open_engine(folder: Path, *, create: bool) -> tuple[Engine, bool]:
    """(engine, read_only) on the library's database, migrated to SCHEMA_VERSION."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"{folder} is a file, not a library folder")
    path = database_path(folder)
    if not path.exists() and not create:
        raise StorageError(f"no vitdex library at {folder} (run `vitdex ingest` to create one)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create library folder {folder}: {error.strerror}") from None
    read_only = path.exists() and is_read_only(folder)
    if read_only:
        # A read-only WAL database opens when its -shm file exists; else it is opened as
        # immutable, which is right: nobody can be writing a library nobody may write.
        shm = path.with_name(path.name + "-shm").exists()
        url = f"sqlite:///file:{path}?mode=ro{'' if shm else '&immutable=1'}&uri=true"
        engine = create_engine(url, poolclass=NullPool)
    else:
        engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", lambda c, r: _on_connect(c, r, read_only=read_only))
    event.listen(engine, "begin", _begin)
    try:
        # Setting up (the switch to WAL, migrations) one process at a time: SQLite answers a
        # journal-mode switch racing another with "locked" at once, never waiting.
        with nullcontext() if read_only else FileLock(folder / SETUP_LOCK_NAME):
            migrate(engine, read_only=read_only)
    except exc.DatabaseError as error:
        engine.dispose()
        raise StorageError(f"{path}: {describe(error)}") from None
    return engine, read_only


def describe(error: exc.DBAPIError | sqlite3.Error) -> str:
    """One line for a database error a user can act on."""
    original = getattr(error, "orig", error)
    text = str(original)
    if "file is not a database" in text or "malformed" in text:
        return f"not a readable vitdex database ({text}); restore it from a backup or move it away"
    if "disk is full" in text or "disk I/O error" in text:
        return f"cannot write ({text}): free some disk space and run the command again"
    if "readonly" in text or "read-only" in text:
        return f"the library is read-only ({text})"
    if "locked" in text:
        return f"the database stayed locked by another process ({text})"
    return text


def migrate(engine: Engine, *, read_only: bool = False) -> None:
    """Bring the schema to SCHEMA_VERSION, each step and its version bump in one transaction."""
    with engine.connect() as conn:
        version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        conn.rollback()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"library schema {version} is newer than this vitdex knows ({SCHEMA_VERSION});"
                " upgrade vitdex"
            )
        if read_only:
            raise StorageError(
                f"the library is read-only and its schema ({version}) needs an upgrade to"
                f" {SCHEMA_VERSION}: open it once with write access"
            )
        # Foreign keys off while tables are rebuilt (a pragma outside any transaction).
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("PRAGMA legacy_alter_table=ON")  # renames leave other tables' references
        try:
            with conn.execution_options(**{WRITE: True}).begin():
                # Re-read under the write lock: a concurrent first run may have migrated already.
                version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
                for step in range(version, SCHEMA_VERSION):
                    log.info("migrating library schema %d -> %d", step, step + 1)
                    MIGRATIONS[step](conn)
                    conn.exec_driver_sql(f"PRAGMA user_version = {step + 1}")
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if problems:
                    raise StorageError(f"migration left broken references: {problems[:3]}")
        finally:
            raw.execute("PRAGMA legacy_alter_table=OFF")
            raw.execute("PRAGMA foreign_keys=ON")
