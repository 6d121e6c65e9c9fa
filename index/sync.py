"""Keeping a library's FAISS files in step with SQLite, the source of truth.

A file is named `<feature>.g<generation>.faiss`: it holds every image whose vector was set at or
before that generation of the database. Each ingest batch bumps the generation and tags the images
it set, so a file that fell behind (a crash, a concurrent ingest) catches up by removing the ids
that left or changed and adding those tagged later; a missing, unreadable or disagreeing file is
rebuilt from SQLite. Files are replaced atomically, so a kill -9 leaves the old or the new one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select

from vitdex.storage import Image, Vector, stack_blobs

if TYPE_CHECKING:
    from vitdex.index.vector_index import VectorIndex
    from vitdex.library.library import Library

log = logging.getLogger(__name__)

PAGE = 20_000
KIND_KEY = "index_kind.{feature}"
_FILE = re.compile(r"^(?P<feature>\w+)\.g(?P<generation>\d+)\.faiss$")


def index_files(library: Library, feature: str) -> list[tuple[int, Path]]:
    """The feature's index files, newest generation first."""
    found = []
    for path in library.index_folder.iterdir():
        match = _FILE.match(path.name)
        if match and match["feature"] == feature:
            found.append((int(match["generation"]), path))
    return sorted(found, reverse=True)


def stored_vectors(
    library: Library, feature: str, *, after_generation: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, vectors) of the feature, optionally only those set after a generation."""
    spec = library.require_spec()
    ids: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    last = 0
    while True:
        query = (
            select(Image.id, Vector.data)
            .join(Vector, Vector.content_id == Image.content_id)
            .where(Vector.spec_id == spec.id, Vector.feature == feature, Image.id > last)
            .order_by(Image.id)
            .limit(PAGE)
        )
        if after_generation is not None:
            query = query.where(Image.generation > after_generation)
        with library.sessions() as session:
            rows = session.execute(query).all()
        if not rows:
            break
        last = rows[-1][0]
        ids.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
        vectors.append(stack_blobs([r[1] for r in rows], spec.dim))
    if not ids:
        return np.empty(0, np.int64), np.empty((0, spec.dim), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)


def stored_ids(library: Library) -> np.ndarray:
    with library.sessions() as session:
        return np.fromiter(session.scalars(select(Image.id)), np.int64)


def preferred_kind(library: Library, feature: str) -> str:
    return library.get_meta(KIND_KEY.format(feature=feature), "auto")


def synced_index(library: Library, feature: str, *, save: bool) -> VectorIndex:
    """The feature's index, brought up to the database's generation (and saved when `save`)."""
    from vitdex.index.errors import IndexFileError
    from vitdex.index.vector_index import VectorIndex, choose_kind

    generation = library.generation()
    with library.sessions() as session:
        count = session.scalar(select(func.count()).select_from(Image))
    preferred = preferred_kind(library, feature)
    wanted = choose_kind(count) if preferred == "auto" else preferred

    index, file_generation = None, -1
    files = index_files(library, feature)
    if files:
        file_generation, path = files[0]
        try:
            index = VectorIndex.load(path)
        except IndexFileError as exc:
            log.warning("%s; rebuilding it from the database", exc)
    if index is not None and (
        index.kind != wanted or file_generation > generation or _outgrown(index, count)
    ):
        index = None
    if index is not None and file_generation == generation and index.ntotal == count:
        return index
    if index is not None and file_generation < generation:
        index = _catch_up(library, index, feature, file_generation)
    if index is not None and index.ntotal != count:
        log.warning("index for %s disagrees with the database; rebuilding it", feature)
        index = None
    if index is None:
        ids, vectors = stored_vectors(library, feature)
        log.info("building %s index of %d %s vectors", wanted, len(ids), feature)
        index = VectorIndex.build(ids, vectors, kind=wanted)
    if save:
        save_index(library, index, feature, generation)
    return index


def _outgrown(index: VectorIndex, count: int) -> bool:
    """An IVF index trained when the library was much smaller has too few lists: retrain it."""
    from vitdex.index.vector_index import default_nlist

    return "nlist" in index.params and default_nlist(count) > 2 * index.params["nlist"]


def _catch_up(
    library: Library, index: VectorIndex, feature: str, file_generation: int
) -> VectorIndex | None:
    """Apply what changed since the file was written; None when the index cannot remove ids."""
    changed_ids, changed_vectors = stored_vectors(
        library, feature, after_generation=file_generation
    )
    present = index.ids()
    stale = np.union1d(
        np.setdiff1d(present, stored_ids(library)), np.intersect1d(changed_ids, present)
    )
    if len(stale) and not index.can_remove:
        return None
    if len(stale):
        index.remove(stale)
    if len(changed_ids):
        index.add(changed_ids, changed_vectors)
    return index


def save_index(library: Library, index: VectorIndex, feature: str, generation: int) -> Path:
    """Write the file for `generation` atomically, then drop the older ones."""
    path = library.index_folder / f"{feature}.g{generation}.faiss"
    index.save(path)
    for old_generation, old in index_files(library, feature):
        if old_generation < generation:
            old.unlink(missing_ok=True)
    return path


def rebuild_index(library: Library, feature: str, kind: str = "auto") -> VectorIndex:
    """Rebuild from SQLite with `kind`, which also becomes the feature's kind from now on."""
    from vitdex.index.vector_index import VectorIndex, choose_kind

    library.set_meta(KIND_KEY.format(feature=feature), kind)
    ids, vectors = stored_vectors(library, feature)
    index = VectorIndex.build(ids, vectors, kind=choose_kind(len(ids)) if kind == "auto" else kind)
    save_index(library, index, feature, library.generation())
    return index


def evaluate_index(library: Library, feature: str, *, sample: int = 1000, k: int = 10) -> dict:
    """recall@k of the feature's current index against exact search over the stored vectors."""
    from vitdex.index.evaluate import recall_at_k

    index = library.index(feature)
    ids, vectors = stored_vectors(library, feature)
    recall = (
        recall_at_k(index, vectors, ids, sample=min(sample, len(ids)), k=k) if len(ids) else 1.0
    )
    return {
        "feature": feature,
        "kind": index.kind,
        "vectors": index.ntotal,
        "k": k,
        "sample": min(sample, len(ids)),
        "recall": recall,
        "params": index.params,
    }
