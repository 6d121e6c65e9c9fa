"""A library: one folder holding the SQLite database and the FAISS files, bound to one spec."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from vitdex.library.config import resolve_library_path, resolve_model
from vitdex.library.errors import LibraryError, SpecMismatchError
from vitdex.storage import Failure, Image, Meta, Spec, open_engine, session_factory

if TYPE_CHECKING:
    from vitdex.embedder import Embedder, EmbeddingSpec
    from vitdex.index.vector_index import VectorIndex
    from vitdex.library.ingest import IngestReport

log = logging.getLogger(__name__)

GENERATION_KEY = "generation"


class Library:
    """Open with `Library.open(folder)`; every other part of the API hangs off it."""

    def __init__(self, folder: Path, *, create: bool = False):
        self.folder = Path(folder)
        self.engine = open_engine(self.folder, create=create)
        self.sessions = session_factory(self.engine)
        self._embedder: Embedder | None = None
        self._indexes: dict[str, tuple[int, VectorIndex]] = {}

    @classmethod
    def open(cls, folder: str | Path | None = None, *, create: bool = False) -> Library:
        """Open the library at `folder` (else $VITDEX_LIBRARY, else the platform default)."""
        return cls(resolve_library_path(folder), create=create)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- spec -----------------------------------------------------------------------------
    @property
    def spec_row(self) -> Spec | None:
        with self.sessions() as session:
            return session.scalars(select(Spec).order_by(Spec.id)).first()

    @property
    def spec(self) -> EmbeddingSpec | None:
        from vitdex.embedder import EmbeddingSpec

        row = self.spec_row
        return None if row is None else EmbeddingSpec.from_dict(json.loads(row.spec_json))

    def require_spec(self) -> Spec:
        row = self.spec_row
        if row is None:
            raise LibraryError(f"library {self.folder} is empty: run `vitdex ingest PATH` first")
        return row

    def bind_spec(self, spec: EmbeddingSpec) -> Spec:
        """Bind an empty library to `spec`, or check that it is the library's spec."""
        with self.sessions.begin() as session:
            row = session.scalars(select(Spec).order_by(Spec.id)).first()
            if row is None:
                row = Spec(
                    key=spec.key,
                    model_id=spec.model_id,
                    revision=spec.revision,
                    dim=spec.dim,
                    spec_json=json.dumps(spec.to_dict(), sort_keys=True),
                    created_at=datetime.now(UTC),
                )
                session.add(row)
                session.flush()
                return row
        bound = json.loads(row.spec_json).get("runtime", "torch-fp32")
        if row.key != spec.key and bound != spec.runtime:
            from vitdex.embedder import runtime_option

            raise SpecMismatchError(
                f"library {self.folder} holds vectors made with --runtime"
                f" {runtime_option(bound)}, not {runtime_option(spec.runtime)}; vectors of two"
                " runtimes never mix. Drop --runtime to use the library's own, or start a new"
                " library with `--library NEW_FOLDER` (or VITDEX_LIBRARY)."
            )
        if row.key != spec.key:
            raise SpecMismatchError(
                f"library {self.folder} holds vectors of {row.model_id} (revision"
                f" {row.revision}, spec {row.key}), not of {spec.model_id} (revision"
                f" {spec.revision}, spec {spec.key}); vectors of two specs never mix. Start a new"
                " library for this model with `--library NEW_FOLDER` (or VITDEX_LIBRARY), or drop"
                " --model to use the library's own."
            )
        return row

    def embedder(
        self, model: str | None = None, *, device: str = "auto", runtime: str | None = None
    ) -> Embedder:
        """The embedder for this library's spec (loaded once, lazily: it imports torch).

        `runtime` ("fp32" or "int8") defaults to the one the library was made with, so a search
        needs no --runtime; the int8 model is cached in the library's models/ folder.
        """
        if self._embedder is None:
            from vitdex.embedder import Embedder, runtime_option

            row = self.spec_row
            spec = self.spec
            self._embedder = Embedder.load(
                resolve_model(model, row.model_id if row else None),
                device=device,
                runtime=runtime or (runtime_option(spec.runtime) if spec else "fp32"),
                cache_dir=self.folder / "models",
            )
            self.bind_spec(self._embedder.spec)
        return self._embedder

    # --- generation: the counter the FAISS files are compared with --------------------------
    def generation(self, session=None) -> int:
        if session is None:
            with self.sessions() as session:
                return self.generation(session)
        value = session.get(Meta, GENERATION_KEY)
        return int(value.value) if value else 0

    def next_generation(self, session) -> int:
        """Bump the counter inside the caller's transaction, so it commits with the rows it tags."""
        row = session.get(Meta, GENERATION_KEY)
        if row is None:
            row = Meta(key=GENERATION_KEY, value="0")
            session.add(row)
        row.value = str(int(row.value) + 1)
        return int(row.value)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.sessions() as session:
            row = session.get(Meta, key)
            return row.value if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.sessions.begin() as session:
            session.merge(Meta(key=key, value=value))

    # --- small queries ------------------------------------------------------------------------
    def image_count(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Image))

    def failures(self) -> list[dict]:
        with self.sessions() as session:
            rows = session.scalars(select(Failure).order_by(Failure.path))
            return [{"path": f.path, "error": f.error} for f in rows]

    @cached_property
    def index_folder(self) -> Path:
        folder = self.folder / "index"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def index(self, feature: str = "cls") -> VectorIndex:
        """The feature's FAISS index, current with the database; cached while nothing changes.

        It is saved when it had to catch up, unless an ingest holds the write lock (that ingest
        saves it at its end), so searches work during an ingest.
        """
        from vitdex.index.sync import synced_index
        from vitdex.library.lock import is_locked

        generation = self.generation()
        cached = self._indexes.get(feature)
        if cached and cached[0] == generation:
            return cached[1]
        index = synced_index(self, feature, save=not is_locked(self.folder))
        self._indexes[feature] = (generation, index)
        return index

    # --- the operations, as methods for library users -----------------------------------------
    def ingest(self, paths, **options) -> IngestReport:
        """See `vitdex.library.ingest.ingest`."""
        from vitdex.library.ingest import ingest

        return ingest(self, paths, **options)

    def search(self, query, **options) -> dict:
        """See `vitdex.library.search.search`."""
        from vitdex.library.search import search

        return search(self, query, **options)

    def status(self) -> dict:
        """See `vitdex.library.status.status`."""
        from vitdex.library.status import status

        return status(self)
