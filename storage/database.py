"""Opening a library database: engine, pragmas, schema version and migrations in a transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from vitdex.library.errors import LibraryError
from vitdex.storage.models import Base

log = logging.getLogger(__name__)

DATABASE_NAME = "vitdex.sqlite"


def _create_v1(conn: Connection) -> None:
    Base.metadata.create_all(conn)


# Schema version N is reached by running MIGRATIONS[N - 1]; append, never edit.
MIGRATIONS: list[Callable[[Connection], None]] = [_create_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def _on_connect(dbapi_connection, _record) -> None:
    # WAL lets searches read while an ingest writes; busy_timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _begin(conn) -> None:
    # Emit BEGIN ourselves (pysqlite is in autocommit) so DDL in migrations is transactional too.
    conn.exec_driver_sql("BEGIN")


def open_engine(folder: Path, *, create: bool) -> Engine:
    """An engine on the library's database, migrated to SCHEMA_VERSION."""
    path = Path(folder) / DATABASE_NAME
    if not path.exists() and not create:
        raise LibraryError(f"no vitdex library at {folder} (run `vitdex ingest` to create one)")
    folder.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _on_connect)
    # Let SQLAlchemy, not pysqlite, control transactions, so migrations and batches are atomic.
    event.listen(
        engine, "connect", lambda dbapi_conn, _: setattr(dbapi_conn, "isolation_level", None)
    )
    event.listen(engine, "begin", _begin)
    migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to SCHEMA_VERSION; each step and its version bump commit together."""
    with engine.begin() as conn:
        version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"library schema {version} is newer than this vitdex knows ({SCHEMA_VERSION});"
                " upgrade vitdex"
            )
        for step in range(version, SCHEMA_VERSION):
            log.info("migrating library schema %d -> %d", step, step + 1)
            MIGRATIONS[step](conn)
            conn.exec_driver_sql(f"PRAGMA user_version = {step + 1}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
