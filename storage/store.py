"""The Store: one object per open library database, owning its engine, its sessions and every
statement the rest of vitdex runs (in its repositories: images, vectors, probes).

Transactions are explicit and nest: inside `with store.snapshot():` every read of this thread
sees the same snapshot; inside `with store.transaction():` every write commits together, or none.
The database is SQLite in the library folder, or PostgreSQL at a URL (`database=`), shared by
several machines: then `writer_lock` keeps one writer per library across all of them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, exc, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from vitdex.storage.database import (
    describe,
    lock_key,
    open_engine,
    postgres_url,
    read_options,
    write_options,
)
from vitdex.storage.errors import ReadOnlyLibraryError, StorageError
from vitdex.storage.models import Generation, Image, Meta, Spec

LIBRARY_ID_KEY = "library_id"
GENERATION_KEY = "generation"


@dataclass(frozen=True, slots=True)
class StoredSpec:
    id: int
    key: str
    model_id: str
    revision: str
    dim: int
    data: dict[str, Any]  # the EmbeddingSpec as a dict

    def dim_of(self, feature: str) -> int:
        """Length of the feature's vectors (cls-last4 is 4 x dim); `dim` in older specs."""
        return int((self.data.get("feature_dims") or {}).get(feature, self.dim))


@dataclass(frozen=True, slots=True)
class LibraryState:
    """What an index file must match to be current, read in one snapshot."""

    library_id: str
    generation: int
    token: str  # the random token of `generation` in this database's history ("" for 0)
    count: int  # images


class WriterLock:
    """The library's writer lock on a PostgreSQL server: a session-level advisory lock held on
    its own connection, so the server frees it when its holder's connection dies (kill -9,
    a machine gone)."""

    def __init__(self, conn: Connection, key: int):
        self._conn, self._key = conn, key

    def release(self) -> None:
        try:
            self._conn.execute(select(func.pg_advisory_unlock(self._key)))
            self._conn.commit()
        finally:
            self._conn.close()


class Store:
    """Open with `Store(folder, database=None, create=...)`; close with `close()`."""

    def __init__(self, folder: Path, *, database: str | None = None, create: bool = False):
        from vitdex.storage.export_rows import ExportRows
        from vitdex.storage.images import Images
        from vitdex.storage.labels import Labels
        from vitdex.storage.probes import Probes
        from vitdex.storage.vectors import Vectors

        self.folder = Path(folder)
        self.engine, self.read_only_reason = open_engine(
            self.folder, database=database, create=create
        )
        # Where the database is, for messages: the folder, or the URL without its password.
        self.location = (
            postgres_url(database).render_as_string(hide_password=True)
            if database
            else str(self.folder)
        )
        self._reads = sessionmaker(
            self.engine.execution_options(**read_options(self.engine)), expire_on_commit=False
        )
        self._writes = sessionmaker(
            self.engine.execution_options(**write_options(self.engine)), expire_on_commit=False
        )
        self._local = threading.local()
        self.images = Images(self)
        self.vectors = Vectors(self)
        self.probes = Probes(self)
        self.export_rows = ExportRows(self)
        self.labels = Labels(self)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    def check_writable(self) -> None:
        """Raise ReadOnlyLibraryError, saying why, when this library may not be changed."""
        if self.read_only_reason is not None:
            raise ReadOnlyLibraryError(
                f"library {self.location} is read-only: {self.read_only_reason}"
            )

    @property
    def shared(self) -> bool:
        """Whether the database is a server several machines may use (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    # --- the writer lock across machines (PostgreSQL) -------------------------------------------
    def writer_lock(self, *, wait: bool) -> WriterLock | None:
        """The library's writer lock on the server (shared databases only), or None when
        another process holds it and `wait` is False."""
        key = self._writer_key()
        conn = self.engine.connect()
        try:
            with self._guard():
                if wait:
                    conn.execute(select(func.pg_advisory_lock(key)))
                    held = True
                else:
                    held = conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one()
                conn.commit()
        except BaseException:
            conn.close()
            raise
        if not held:
            conn.close()
            return None
        return WriterLock(conn, key)

    def writer_holder(self) -> str:
        """Who holds the writer lock, as its connection named itself ("vitdex HOST pid N")."""
        key = self._writer_key() & 0xFFFF_FFFF_FFFF_FFFF
        query = text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid = :high AND l.objid = :low AND l.database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        with self.snapshot() as s:
            row = s.execute(query, {"high": key >> 32, "low": key & 0xFFFF_FFFF}).first()
        if row is None:
            return "another process"
        return row.application_name or f"a process on {row.client_addr}"

    def _writer_key(self) -> int:
        return lock_key("writer", self.library_id)

    # --- transactions ---------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """One read transaction: every read inside sees the database at one moment."""
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current
            return
        with self._guard(), self._reads() as session:
            self._local.session = session
            try:
                yield session
            finally:
                self._local.session = None
                session.rollback()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE): all of it commits, or none of it."""
        current = getattr(self._local, "session", None)
        if current is not None:
            if not getattr(self._local, "writing", False):
                raise RuntimeError("a write transaction cannot start inside a read snapshot")
            yield current
            return
        self.check_writable()
        with self._guard(), self._writes.begin() as session:
            self._local.session, self._local.writing = session, True
            try:
                yield session
            finally:
                self._local.session, self._local.writing = None, False

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Database errors a user can act on (full disk, corruption, locks) as one clear line."""
        try:
            yield
        except exc.DBAPIError as error:
            raise StorageError(f"{self.location}: {describe(error)}") from None

    # --- meta, library id, generation -----------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.snapshot() as s:
            row = s.get(Meta, key)
            return row.value if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as s:
            s.merge(Meta(key=key, value=value))

    @property
    def library_id(self) -> str:
        return self.get_meta(LIBRARY_ID_KEY) or ""

    def generation(self) -> int:
        return int(self.get_meta(GENERATION_KEY, "0"))

    def bump_generation(self) -> int:
        """Inside a transaction that changes vectors: the generation it tags them with."""
        with self.transaction() as s:
            row = s.get(Meta, GENERATION_KEY)
            if row is None:
                row = Meta(key=GENERATION_KEY, value="0")
                s.add(row)
            row.value = str(int(row.value) + 1)
            s.add(Generation(generation=int(row.value), token=uuid.uuid4().hex))
            return int(row.value)

    def token_of(self, generation: int) -> str | None:
        """The token of a generation in this database's history; "" for 0, None if unknown."""
        if generation == 0:
            return ""
        with self.snapshot() as s:
            return s.scalar(select(Generation.token).where(Generation.generation == generation))

    def state(self) -> LibraryState:
        with self.snapshot() as s:
            generation = self.generation()
            count = s.scalar(select(func.count()).select_from(Image))  # an index-only count
            return LibraryState(self.library_id, generation, self.token_of(generation) or "", count)

    # --- the spec -------------------------------------------------------------------------------
    def spec(self) -> StoredSpec | None:
        with self.snapshot() as s:
            row = s.scalars(select(Spec).order_by(Spec.id)).first()
            return None if row is None else _stored_spec(row)

    def bind_spec(self, key: str, model_id: str, revision: str, dim: int, data: dict) -> StoredSpec:
        """The library's spec: `data` becomes it when the library has none yet."""
        with self.transaction() as s:
            row = s.scalars(select(Spec).order_by(Spec.id)).first()
            if row is None:
                row = Spec(key=key, model_id=model_id, revision=revision, dim=dim,
                           spec_json=json.dumps(data, sort_keys=True),
                           created_at=datetime.now(UTC))  # fmt: skip
                s.add(row)
                s.flush()
            return _stored_spec(row)

    def update_spec(self, spec_id: int, key: str, revision: str, data: dict) -> StoredSpec:
        """Rewrite the spec's description (same vectors, e.g. an older spec format upgraded)."""
        with self.transaction() as s:
            row = s.get(Spec, spec_id)
            row.key, row.revision = key, revision
            row.spec_json = json.dumps(data, sort_keys=True)
            return _stored_spec(row)


def _stored_spec(row: Spec) -> StoredSpec:
    return StoredSpec(row.id, row.key, row.model_id, row.revision, row.dim,
                      json.loads(row.spec_json))  # fmt: skip
