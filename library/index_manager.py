"""The index manager: the one place where the store and the FAISS indexes meet.

`IndexManager.current(feature)` gives a searchable index that is never stale. Every index file
has a sidecar that ties it to its database: the library id, the generation it covers with that
generation's random token, and the count it holds. A file is used only when its
library id matches and its token is the one this database logged for its generation (so a
restored, re-created or foreign database is never answered from a file of another history); it
then catches up on what changed since, read in one snapshot with the state it is checked
against. Anything else is rebuilt from the store.

Only a writer, under the library's write lock, saves files (`refresh`, `rebuild`); a reader that
had to catch up or rebuild keeps the result in memory and saves it only if the lock is free.
The generation moves only when vectors change, so a no-op ingest touches no file.

Builds hold at most `build_memory` bytes of vectors (env VITDEX_INDEX_BUILD_MEMORY_MB, default
1024): an IVF index whose vectors would take more (past ~350k vectors at 768-d with the
default) is built on disk from pages of the store (vitdex.index.ondisk); Flat and HNSW, which
need every vector in memory, are built in memory whatever their size. An IVF file that is behind
is mapped and caught up on disk (`catch_up_on_disk`), never loaded whole.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdex.library.errors import LibraryError
from vitdex.library.lock import try_write_lock

if TYPE_CHECKING:
    from vitdex.index.vector_index import VectorIndex
    from vitdex.storage import LibraryState, Store, StoredSpec

log = logging.getLogger(__name__)

KIND_KEY = "index_kind.{feature}"
_FILE = re.compile(r"^(?P<feature>[\w-]+)\.g(?P<generation>\d+)\.faiss$")
_BUILD_DIR = re.compile(r"^\.(build|catch-up)-(?P<pid>\d+)-[0-9a-f]{16}$")
BUILD_MEMORY_ENV = "VITDEX_INDEX_BUILD_MEMORY_MB"


@dataclass(frozen=True, slots=True)
class IndexFile:
    feature: str
    generation: int
    path: Path


@dataclass
class _Loaded:
    index: VectorIndex
    generation: int
    token: str
    saved: bool  # a file with exactly this content exists


class IndexSaveError(LibraryError):
    """An index file could not be written (full disk, read-only folder)."""


class IndexManager:
    """Keeps each feature's FAISS index in step with the store."""

    def __init__(self, store: Store, folder: Path, *, build_memory: int | None = None):
        from vitdex.index.ondisk import BUILD_MEMORY

        self.store = store
        self.folder = Path(folder)
        self._loaded: dict[str, _Loaded] = {}
        self.builds = 0  # full builds from the store in this process (tests count them)
        self.ondisk_builds = 0  # of which on disk
        if build_memory is None:
            env = os.environ.get(BUILD_MEMORY_ENV)
            build_memory = int(float(env) * 2**20) if env else BUILD_MEMORY
        self.build_memory = build_memory

    # --- files ----------------------------------------------------------------------------------
    def files(self, feature: str) -> list[IndexFile]:
        """The feature's index files, newest generation first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _FILE.match(path.name)
            if match and match["feature"] == feature:
                found.append(IndexFile(feature, int(match["generation"]), path))
        return sorted(found, key=lambda f: f.generation, reverse=True)

    def preferred_kind(self, feature: str) -> str:
        return self.store.get_meta(KIND_KEY.format(feature=feature), "auto")

    def describe(self, feature: str, state: LibraryState) -> dict:
        """What status shows of a feature's newest file: its sidecar, and a cheap check (size
        and tag, no FAISS) that the index file is the one the sidecar describes."""
        from vitdex.index.errors import IndexFileError
        from vitdex.index.vector_index import read_header

        entry: dict = {"preferred": self.preferred_kind(feature), "file": None}
        for file in self.files(feature):
            try:
                sidecar = read_header(file.path)
            except IndexFileError as exc:
                entry.update(file=str(file.path), error=f"{exc} (rebuilt on the next ingest)")
                return entry
            meta = sidecar.get("meta", {})
            entry.update(
                file=str(file.path), kind=sidecar["kind"], vectors=sidecar["ntotal"],
                bytes=sidecar["bytes"], params=sidecar["params"],
                up_to_date=self._matches(meta, state) and meta.get("generation") == state.generation
                and meta.get("count") == state.count,
            )  # fmt: skip
            return entry
        return entry

    # --- the current index ----------------------------------------------------------------------
    def current(self, feature: str) -> VectorIndex:
        """The feature's index, current with the store (cached while nothing changes)."""
        spec = self._spec()
        with self.store.snapshot():
            state = self.store.state()
            loaded = self._loaded.get(feature)
            if loaded is None or not self._is_ancestor(loaded.generation, loaded.token, state):
                loaded = self._from_file(feature, state, spec)
            if loaded is not None and loaded.generation != state.generation:
                loaded = self._catch_up(loaded, feature, state, spec)
            if loaded is not None and loaded.index.ntotal != state.count:
                log.warning("the %s index disagrees with the database; rebuilding it", feature)
                loaded = None
            if loaded is None:
                loaded = self._build(feature, state, spec, self.preferred_kind(feature))
        self._loaded[feature] = loaded
        if not loaded.saved:  # even a read-only database's reader may keep files in its folder
            lock = try_write_lock(self.store.folder)
            if lock is not None:
                try:
                    self._save(feature, loaded, state)
                except LibraryError as exc:  # a reader answers from memory all the same
                    log.warning("%s", exc)
                finally:
                    lock.release()
        return loaded.index

    def refresh(self, features: list[str] | None = None) -> None:
        """Writer only (holding the write lock): bring these features' files (default: every
        feature the library stores) up to date."""
        if features is None:
            features = list(self._spec().data.get("features", ["cls"]))
        for feature in features:
            self.current(feature)
            loaded = self._loaded[feature]
            if not loaded.saved:
                self._save(feature, loaded, self.store.state())
            self._clean(feature, keep=loaded.generation)

    def rebuild(self, feature: str, kind: str = "auto") -> VectorIndex:
        """Writer only: build from the store with `kind`, which is kept only once the build
        succeeded (so a failed build changes nothing)."""
        spec = self._spec()
        with self.store.snapshot():
            state = self.store.state()
            loaded = self._build(feature, state, spec, kind)
        self._save(feature, loaded, state)
        self.store.set_meta(KIND_KEY.format(feature=feature), kind)
        self._loaded[feature] = loaded
        self._clean(feature, keep=loaded.generation)
        return loaded.index

    # --- inside -----------------------------------------------------------------------------------
    def _spec(self) -> StoredSpec:
        spec = self.store.spec()
        if spec is None:
            raise LibraryError(f"library {self.store.folder} is empty: run `vitdex ingest` first")
        return spec

    def _matches(self, meta: dict, state: LibraryState) -> bool:
        return meta.get("library_id") == state.library_id and self._is_ancestor(
            meta.get("generation", -1), meta.get("token"), state
        )

    def _is_ancestor(self, generation: int, token: str | None, state: LibraryState) -> bool:
        """Whether (generation, token) is a point of this database's own history."""
        if not isinstance(generation, int) or generation > state.generation:
            return False
        if generation == state.generation:
            return token == state.token
        return self.store.token_of(generation) == token

    def _from_file(self, feature: str, state: LibraryState, spec: StoredSpec) -> _Loaded | None:
        from vitdex.index.errors import IndexFileError
        from vitdex.index.vector_index import VectorIndex, read_sidecar

        for file in self.files(feature):
            try:
                sidecar = read_sidecar(file.path)
            except IndexFileError as exc:
                log.warning("%s; ignoring it", exc)
                continue
            meta = sidecar.get("meta", {})
            if not self._matches(meta, state) or meta.get("spec_key") != spec.key:
                log.info("%s belongs to another database state; not used", file.path.name)
                continue
            current = meta["generation"] == state.generation
            # mapped: a current file is searched in place, a behind IVF one caught up on disk
            mapped = current or str(sidecar.get("kind", "")).startswith("ivf")
            try:
                index = VectorIndex.load(file.path, mmap=mapped)
            except IndexFileError as exc:
                log.warning("%s; rebuilding it", exc)
                return None
            if current and meta.get("count") != state.count:
                log.warning("%s does not cover this database's images; rebuilding", file.path.name)
                return None
            if self._outgrown(index, state.count):
                return None
            return _Loaded(index, meta["generation"], meta["token"], saved=True)
        return None

    def _catch_up(
        self, loaded: _Loaded, feature: str, state: LibraryState, spec: StoredSpec
    ) -> _Loaded | None:
        """Apply the changes since the loaded generation; None when it must be rebuilt."""
        if self._outgrown(loaded.index, state.count):
            return None
        index = loaded.index
        on_disk = index.mapped and index.kind.startswith("ivf")
        if on_disk:  # the changed vectors are held: past the build memory, rebuild on disk
            changed = self.store.vectors.count(spec, feature, after_generation=loaded.generation)
            if changed * spec.dim_of(feature) * 4 > self.build_memory:
                return None
        changes = self.store.vectors.changes_since(spec, feature, loaded.generation)
        stale = np.union1d(changes.removed, changes.ids)
        if on_disk:
            from vitdex.index.ondisk import catch_up_on_disk

            with self._workdir("catch-up") as workdir:
                index = catch_up_on_disk(index, stale, changes.ids, changes.vectors, workdir)
        else:  # a memory-mapped Flat or HNSW index copies itself into memory on change
            if len(stale) and not index.can_remove:
                return None
            if len(stale):
                index.remove(stale)
            if len(changes.ids):
                index.add(changes.ids, changes.vectors)
        log.info(
            "%s index caught up from generation %d to %d (%d added, %d removed)",
            feature,
            loaded.generation,
            state.generation,
            len(changes.ids),
            len(changes.removed),
        )
        return _Loaded(index, state.generation, state.token, saved=False)

    def _build(self, feature: str, state: LibraryState, spec: StoredSpec, kind: str) -> _Loaded:
        from vitdex.index.vector_index import VectorIndex, choose_kind

        n = self.store.vectors.count(spec, feature)
        wanted = choose_kind(n) if kind == "auto" else kind
        if wanted.startswith("ivf") and n * spec.dim_of(feature) * 4 > self.build_memory:
            index = self._build_on_disk(feature, spec, wanted, n)
        else:
            ids, vectors = self.store.vectors.of_images(spec, feature)
            log.info("building %s index of %d %s vectors", wanted, len(ids), feature)
            index = VectorIndex.build(ids, vectors, kind=wanted)
        self.builds += 1
        return _Loaded(index, state.generation, state.token, saved=False)

    def _build_on_disk(self, feature: str, spec: StoredSpec, kind: str, n: int) -> VectorIndex:
        """Build in pages from the store (inside the caller's snapshot), shards in a private
        folder under the index folder, removed at the end (or by a writer's `_clean` after a
        crash)."""
        from vitdex.index.ondisk import PagedVectors, build_ivf_on_disk
        from vitdex.storage.vectors import PAGE

        page = int(min(PAGE, max(1000, self.build_memory // (spec.dim_of(feature) * 4 * 8))))
        log.info(
            "building %s index of %d %s vectors on disk (pages of %d, memory %d MB)",
            kind, n, feature, page, self.build_memory >> 20,
        )  # fmt: skip
        vectors = self.store.vectors
        all_ids = vectors.image_ids(spec, feature)  # 8 bytes per image: positions -> ids

        def rows(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return vectors.of_image_ids(spec, feature, all_ids[positions])

        def pages():
            return ((p.ids, p.vectors) for p in vectors.iter_pages(spec, feature, page))

        source = PagedVectors(n=len(all_ids), dim=spec.dim_of(feature), pages=pages, rows=rows)
        with self._workdir("build") as workdir:
            index = build_ivf_on_disk(source, kind, workdir, memory=self.build_memory, page=page)
        self.ondisk_builds += 1
        return index

    @contextmanager
    def _workdir(self, purpose: str) -> Iterator[Path]:
        """A private folder under the index folder for an on-disk build or catch-up, removed
        after (or by a writer's `_clean` after a crash); a read-only library's reader works
        in the system's temp folder."""
        workdir = self.folder / f".{purpose}-{os.getpid()}-{os.urandom(8).hex()}"
        try:
            workdir.mkdir(parents=True)
        except OSError:
            workdir = Path(tempfile.mkdtemp(prefix=f"vitdex-{purpose}-"))
        try:
            yield workdir
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _outgrown(index: VectorIndex, count: int) -> bool:
        """An IVF index trained when the library was much smaller has too few lists."""
        from vitdex.index.vector_index import default_nlist

        return "nlist" in index.params and default_nlist(count) > 2 * index.params["nlist"]

    def _save(self, feature: str, loaded: _Loaded, state: LibraryState) -> None:
        from vitdex.index.errors import IndexFileError

        spec = self._spec()
        path = self.folder / f"{feature}.g{loaded.generation}.faiss"
        ids = loaded.index.ids()  # cached by the index; its length is what the file covers
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            loaded.index.save(path, meta={
                "library_id": state.library_id, "generation": loaded.generation,
                "token": loaded.token, "count": int(len(ids)),
                "spec_key": spec.key, "feature": feature,
            })  # fmt: skip
        except (OSError, IndexFileError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise IndexSaveError(
                f"cannot write the {feature} index in {self.folder} ({reason})."
                " The database is saved and searches stay correct (they catch up in memory);"
                " fix the folder and run `vitdex index rebuild` or the next ingest"
            ) from None
        loaded.saved = True

    def _clean(self, feature: str, *, keep: int) -> None:
        """Writer only: drop the feature's other files (older, newer or foreign) and the
        temporary files of interrupted saves."""
        from vitdex.index.vector_index import remove_temp_files, sidecar_path

        for file in self.files(feature):
            if file.generation != keep:
                file.path.unlink(missing_ok=True)
                sidecar_path(file.path).unlink(missing_ok=True)
        for path in remove_temp_files(self.folder):
            log.info("removed %s, left by an interrupted save", path.name)
        for path in self.folder.iterdir() if self.folder.is_dir() else ():
            match = _BUILD_DIR.match(path.name)
            if match and path.is_dir() and not _alive(int(match["pid"])):
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left by an interrupted build", path.name)


def _alive(pid: int) -> bool:
    """Whether a process with this id runs (a build folder of a live process is in use)."""
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill(pid, 0) would signal it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (PermissionError), or cannot tell
        return True
    return True
