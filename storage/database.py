"""Opening a library database: SQLite in the library folder, or PostgreSQL at a URL.

Every transaction is explicit, and both databases take the same code path:
- Reads see one snapshot: SQLite's WAL snapshot, PostgreSQL's REPEATABLE READ READ ONLY.
- A write takes the database's write lock before it reads anything it will change, and waits
  while another writer holds it instead of failing half-way: SQLite's `BEGIN IMMEDIATE`
  (busy_timeout), a transaction-level advisory lock on PostgreSQL (READ COMMITTED, so once it
  holds the lock every statement sees every earlier commit).
- The schema is an Alembic history (storage/migrations/), one revision per schema version, each
  in its own transaction, run by one process at a time (a file lock beside a SQLite database, a
  session-level advisory lock on PostgreSQL).
A library that cannot be written is opened read-only (status, search and serve work, writes are
refused): SQLite files this user may not write, or a PostgreSQL role without INSERT, UPDATE and
DELETE on every vitdex table (or a server that accepts no writes, such as a standby).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sqlite3
from contextlib import nullcontext
from functools import cache
from pathlib import Path

from filelock import FileLock
from sqlalchemy import (
    Connection,
    Engine,
    column,
    create_engine,
    event,
    exc,
    func,
    inspect,
    select,
    table,
)
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from vitdex.storage.errors import StorageError

log = logging.getLogger(__name__)

DATABASE_NAME = "vitdex.sqlite"
BUSY_TIMEOUT_MS = 60_000
SETUP_LOCK_NAME = "setup.lock"
WRITE = "vitdex_write"  # execution option: this connection's transactions begin as writes
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"


def lock_key(*parts: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit number) for a purpose."""
    digest = hashlib.sha256(":".join(("vitdex", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


SETUP_KEY = lock_key("setup")  # migrations, one process at a time
WRITE_KEY = lock_key("write-transaction")  # one write transaction at a time (BEGIN IMMEDIATE)


# --- the schema's history -------------------------------------------------------------------------
@cache
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


@cache
def schema_version() -> int:
    """The newest schema this vitdex knows: its Alembic head revision ("0002" is schema 2).

    Read from the revision files' names (`NNNN_*.py`, NNNN being the revision id), so opening
    an up-to-date library does not import Alembic."""
    return max(
        int(p.name[:4]) for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )


def _revision(version: int) -> str:
    return f"{version:04d}"


def _current_version(conn: Connection) -> int | None:
    """The schema version of an opened database, or None when it holds no vitdex schema."""
    if inspect(conn).has_table(VERSION_TABLE):
        heads = conn.execute(select(column("version_num")).select_from(table(VERSION_TABLE)))
        return max((int(head) for head in heads.scalars()), default=None)
    if conn.dialect.name == "sqlite":  # vitdex before Alembic: PRAGMA user_version
        return conn.exec_driver_sql("PRAGMA user_version").scalar_one() or None
    return None


def upgrade(conn: Connection, target: str = "head") -> None:
    """Run the revisions from the database's version to `target`, each in one transaction.

    A SQLite library from before Alembic (PRAGMA user_version N, no alembic_version table) is
    stamped with revision N first. `conn` is a connection outside any transaction, whose
    transactions begin as writes (the WRITE execution option).
    """
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    script, sqlite = _script(), conn.dialect.name == "sqlite"
    version = _current_version(conn)
    legacy = version is not None and not inspect(conn).has_table(VERSION_TABLE)
    conn.rollback()
    context = MigrationContext.configure(
        conn,
        opts={
            "transaction_per_migration": True,
            "fn": lambda revision, _context: script._upgrade_revs(target, revision),
            "on_version_apply": [_after_step] if sqlite else [],
        },
    )
    conn.rollback()
    if legacy:
        with conn.begin():
            context.stamp(script, _revision(version))
        log.info("library schema %d stamped as Alembic revision %s", version, _revision(version))
    conn.rollback()
    with Operations.context(context):
        context.run_migrations()


def _after_step(*, ctx, step, heads, run_args) -> None:
    """SQLite, inside each revision's transaction: no broken reference (foreign keys are off
    while tables are rebuilt), and user_version kept, so an older vitdex refuses a newer file."""
    conn = ctx.connection
    problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if problems:
        raise StorageError(f"migration left broken references: {problems[:3]}")
    (head,) = heads
    conn.exec_driver_sql(f"PRAGMA user_version = {int(head)}")


def _check_version(version: int | None, *, where: str, read_only: bool) -> bool:
    """Whether the schema needs an upgrade; raises when this vitdex cannot upgrade it."""
    newest = schema_version()
    if version == newest:
        return False
    if version is not None and version > newest:
        raise StorageError(
            f"{where}: library schema {version} is newer than this vitdex knows ({newest});"
            " upgrade vitdex"
        )
    if read_only:
        raise StorageError(
            f"{where}: the library is read-only and its schema ({version}) needs an upgrade to"
            f" {newest}: open it once with write access"
        )
    return True


# --- SQLite ---------------------------------------------------------------------------------------
PAGE_SIZE = 16384


def _on_connect_sqlite(dbapi_connection, _record, *, read_only: bool) -> None:
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


def _begin_sqlite(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def database_path(folder: Path) -> Path:
    return Path(folder) / DATABASE_NAME


def _sqlite_read_only_reason(folder: Path) -> str | None:
    if os.access(folder, os.W_OK) and os.access(database_path(folder), os.W_OK):
        return None
    return "this user may not write its files"


def _open_sqlite(folder: Path, *, create: bool) -> tuple[Engine, str | None]:
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"{folder} is a file, not a library folder")
    path = database_path(folder)
    if not path.exists() and not create:
        raise StorageError(f"no vitdex library at {folder} (run `vitdex ingest` to create one)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create library folder {folder}: {error.strerror}") from None
    reason = _sqlite_read_only_reason(folder) if path.exists() else None
    read_only = reason is not None
    if read_only:
        # A read-only WAL database opens when its -shm file exists; else it is opened as
        # immutable, which is right: nobody can be writing a library nobody may write.
        shm = path.with_name(path.name + "-shm").exists()
        url = f"sqlite:///file:{path}?mode=ro{'' if shm else '&immutable=1'}&uri=true"
        engine = create_engine(url, poolclass=NullPool)
    else:
        engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", lambda c, r: _on_connect_sqlite(c, r, read_only=read_only))
    event.listen(engine, "begin", _begin_sqlite)
    try:
        # Setting up (the switch to WAL, migrations) one process at a time: SQLite answers a
        # journal-mode switch racing another with "locked" at once, never waiting.
        with nullcontext() if read_only else FileLock(folder / SETUP_LOCK_NAME):
            _migrate_sqlite(engine, where=str(path), read_only=read_only)
    except exc.DatabaseError as error:
        engine.dispose()
        raise StorageError(f"{path}: {describe(error)}") from None
    except StorageError:
        engine.dispose()
        raise
    return engine, reason


def _migrate_sqlite(engine: Engine, *, where: str, read_only: bool) -> None:
    with engine.connect() as conn:
        version = _current_version(conn)
        stamped = inspect(conn).has_table(VERSION_TABLE)
        conn.rollback()
        needed = _check_version(version, where=where, read_only=read_only)
        if not needed and (stamped or read_only or version is None):
            return  # (a library from before Alembic is stamped on its first writable open)
        # Foreign keys off while tables are rebuilt (a pragma outside any transaction).
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("PRAGMA legacy_alter_table=ON")  # renames leave other tables' references
        try:
            upgrade(conn.execution_options(**{WRITE: True}))
        finally:
            raw.execute("PRAGMA legacy_alter_table=OFF")
            raw.execute("PRAGMA foreign_keys=ON")


# --- PostgreSQL -----------------------------------------------------------------------------------
def application_name() -> str:
    """How a vitdex connection names itself on the server (who holds a lock: pg_stat_activity)."""
    return f"vitdex {socket.gethostname()} pid {os.getpid()}"[:63]


def _on_connect_postgres(dbapi_connection, _record) -> None:
    # Timestamps are stored as UTC whatever the server's or the client's time zone.
    dbapi_connection.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def _begin_postgres(conn: Connection) -> None:
    if conn.get_execution_options().get(WRITE, False):
        conn.execute(select(func.pg_advisory_xact_lock(WRITE_KEY)))


def postgres_url(database: str):
    """The SQLAlchemy URL of `--database`, psycopg 3 when no driver is named."""
    try:
        url = make_url(database)
    except exc.ArgumentError:
        raise StorageError(
            f"--database {database!r} is not a database URL"
            " (for example postgresql+psycopg://user@host/vitdex)"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise StorageError(
            f"--database {url.render_as_string(hide_password=True)}: only PostgreSQL URLs are"
            " supported (postgresql+psycopg://...); SQLite lives in the library folder"
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def _postgres_read_only_reason(conn: Connection) -> str | None:
    """Why this connection may not write the library, or None: a server in recovery (a standby)
    or read-only by default, or a role without INSERT, UPDATE and DELETE on every vitdex table."""
    from vitdex.storage.models import Base

    if conn.scalar(select(func.pg_is_in_recovery())):
        return "the server is a standby that accepts no writes"
    if conn.scalar(select(func.current_setting("default_transaction_read_only"))) == "on":
        return "the server's transactions are read-only by default"
    checks = [
        func.has_table_privilege(name, privilege)
        for name in Base.metadata.tables
        for privilege in ("INSERT", "UPDATE", "DELETE")
    ]
    if not all(conn.execute(select(*checks)).one()):
        return f"database role {conn.scalar(select(func.current_user()))} may not write it"
    return None


def _open_postgres(database: str, *, create: bool) -> tuple[Engine, str | None]:
    url = postgres_url(database)
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(url, connect_args={"application_name": application_name()})
    except ImportError:
        raise StorageError(
            f"{shown}: PostgreSQL needs psycopg: pip install 'vitdex[postgres]'"
        ) from None
    event.listen(engine, "connect", _on_connect_postgres)
    event.listen(engine, "begin", _begin_postgres)
    try:
        with engine.connect() as conn:
            conn.execute(select(func.pg_advisory_lock(SETUP_KEY)))
            conn.commit()
            try:
                version = _current_version(conn)
                conn.rollback()
                if version is None and not create:
                    raise StorageError(
                        f"no vitdex library in {shown} (run `vitdex ingest --database URL` to"
                        " create one)"
                    )
                reason = None if version is None else _postgres_read_only_reason(conn)
                conn.rollback()
                if _check_version(version, where=shown, read_only=reason is not None):
                    upgrade(conn.execution_options(**{WRITE: True}))
            finally:
                conn.rollback()
                conn.execute(select(func.pg_advisory_unlock(SETUP_KEY)))
                conn.commit()
    except exc.DBAPIError as error:
        engine.dispose()
        raise StorageError(f"{shown}: {describe(error)}") from None
    except StorageError:
        engine.dispose()
        raise
    return engine, reason


# --- both -----------------------------------------------------------------------------------------
def open_engine(
    folder: Path, *, database: str | None = None, create: bool
) -> tuple[Engine, str | None]:
    """(engine, why it is read-only or None) on the library's database, migrated to the newest
    schema: the SQLite file in `folder`, or the PostgreSQL database at the URL `database`."""
    if database:
        engine, reason = _open_postgres(database, create=create)
        try:  # this machine's index files and caches
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.warning("cannot create library folder %s: %s", folder, error.strerror)
        return engine, reason
    return _open_sqlite(Path(folder), create=create)


def read_options(engine: Engine) -> dict:
    """Execution options of a read transaction: one snapshot, nothing written."""
    if engine.dialect.name == "postgresql":
        return {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    return {}


def write_options(engine: Engine) -> dict:
    """Execution options of a write transaction (see `_begin_sqlite`, `_begin_postgres`)."""
    if engine.dialect.name == "postgresql":
        return {WRITE: True, "isolation_level": "READ COMMITTED"}
    return {WRITE: True}


def upsert(engine: Engine, model, index_elements: list[str], update: list[str]):
    """INSERT .. ON CONFLICT (index_elements) DO UPDATE SET update = excluded.update, in the
    engine's dialect."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(model)
    return statement.on_conflict_do_update(
        index_elements=index_elements, set_={name: statement.excluded[name] for name in update}
    )


def describe(error: exc.DBAPIError | sqlite3.Error) -> str:
    """One line for a database error a user can act on."""
    original = getattr(error, "orig", error)
    text = " ".join(str(original).split())
    if "file is not a database" in text or "malformed" in text:
        return f"not a readable vitdex database ({text}); restore it from a backup or move it away"
    if "disk is full" in text or "disk I/O error" in text or "No space left" in text:
        return f"cannot write ({text}): free some disk space and run the command again"
    if "readonly" in text or "read-only" in text:
        return f"the library is read-only ({text})"
    if "locked" in text:
        return f"the database stayed locked by another process ({text})"
    if "permission denied" in text:
        return f"this database role may not do that ({text})"
    return text


SCHEMA_VERSION = schema_version()
