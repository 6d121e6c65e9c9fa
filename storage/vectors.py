"""Vectors: raw little-endian float32 blobs (no pickle), read in pages straight into preallocated
numpy arrays, so reading N vectors holds N vectors once, never a list of rows beside them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, insert, select

from vitdex.storage.errors import StorageError
from vitdex.storage.files import to_db
from vitdex.storage.images import chunks
from vitdex.storage.models import Image, Removal, Vector

if TYPE_CHECKING:
    from vitdex.storage.store import Store, StoredSpec

PAGE = 20_000


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int | None = None) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if dim is not None and vector.shape[0] != dim:
        raise ValueError(f"stored vector has {vector.shape[0]} values, expected {dim}")
    return vector


@dataclass(frozen=True, slots=True)
class Changes:
    """What an index written at some generation must apply to be current."""

    ids: np.ndarray  # images whose vectors were set after it: (re)add these
    vectors: np.ndarray
    removed: np.ndarray  # images removed after it


@dataclass(frozen=True, slots=True)
class VectorPage:
    """One page of (image id, vector) rows, by ascending image id."""

    ids: np.ndarray  # int64 (n,)
    vectors: np.ndarray  # float32 (n, dim)


class Vectors:
    """The store's statements about vectors."""

    def __init__(self, store: Store):
        self.store = store

    def add(self, spec: StoredSpec, rows: Sequence[tuple[int, dict[str, np.ndarray]]]) -> None:
        """Vectors of new contents: (content id, {feature: vector}) pairs, one bulk INSERT."""
        if not rows:
            return
        with self.store.transaction() as s:
            s.execute(insert(Vector), [
                {"content_id": content_id, "spec_id": spec.id, "feature": name,
                 "data": to_blob(vector)}
                for content_id, vectors in rows for name, vector in vectors.items()
            ])  # fmt: skip

    def _where(self, spec: StoredSpec, feature: str, after_generation: int | None,
               under: str | None) -> list:  # fmt: skip
        from vitdex.storage.images import _under

        where = [Vector.spec_id == spec.id, Vector.feature == feature]
        if after_generation is not None:
            where.append(Image.generation > after_generation)
        if under is not None:
            where.append(_under(Image.path, under))
        return where

    def count(
        self,
        spec: StoredSpec,
        feature: str,
        *,
        after_generation: int | None = None,
        under: str | None = None,
    ) -> int:
        """How many images have a vector of this feature (the N that `iter_pages` yields)."""
        where = self._where(spec, feature, after_generation, under)
        with self.store.snapshot() as s:
            return int(s.scalar(
                select(func.count()).select_from(Image)
                .join(Vector, Vector.content_id == Image.content_id).where(*where)
            ))  # fmt: skip

    def iter_pages(
        self,
        spec: StoredSpec,
        feature: str,
        page: int = PAGE,
        *,
        after_generation: int | None = None,
        under: str | None = None,
        after_id: int = 0,
    ) -> Iterator[VectorPage]:
        """(image ids, vectors) pages of at most `page` rows, by image id, so a caller holds one
        page at a time whatever N is. Keyset paging (`id > last`): each page is one indexed
        range read, not an OFFSET that rescans. All pages come from one snapshot while the
        iterator is consumed inside the caller's `store.snapshot()`; otherwise each page is its
        own read (a concurrent writer may then be seen part way)."""
        if page < 1:
            raise ValueError(f"page must be >= 1, got {page}")
        where = self._where(spec, feature, after_generation, under)
        last = after_id
        while True:
            with self.store.snapshot() as s:
                rows = s.execute(
                    select(Image.id, Vector.data)
                    .join(Vector, Vector.content_id == Image.content_id)
                    .where(*where, Image.id > last).order_by(Image.id).limit(page)
                ).all()  # fmt: skip
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(
                len(rows), spec.dim_of(feature)
            )
            del rows
            last = int(ids[-1])
            yield VectorPage(ids, vectors)
            if len(ids) < page:
                return

    def of_images(
        self,
        spec: StoredSpec,
        feature: str,
        *,
        after_generation: int | None = None,
        under: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, vectors) of every image (or those set after a generation), by id."""
        with self.store.snapshot():
            n = self.count(spec, feature, after_generation=after_generation, under=under)
            ids = np.empty(n, np.int64)
            out = np.empty((n, spec.dim_of(feature)), np.float32)
            filled = 0
            for part in self.iter_pages(
                spec, feature, after_generation=after_generation, under=under
            ):
                end = filled + len(part.ids)
                if end > n:  # cannot happen inside one snapshot; guards a misuse
                    raise StorageError(f"{self.store.folder}: vectors changed while read")
                ids[filled:end], out[filled:end] = part.ids, part.vectors
                filled = end
        return ids[:filled], out[:filled]

    def of_image_ids(
        self, spec: StoredSpec, feature: str, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of these images that have a vector, by id, in preallocated arrays
        (e.g. a training sample or query rows); ids without one are left out."""
        want = np.unique(np.asarray(ids, np.int64))
        out_ids = np.empty(len(want), np.int64)
        out = np.empty((len(want), spec.dim_of(feature)), np.float32)
        filled = 0
        with self.store.snapshot() as s:
            for part in chunks(want.tolist(), 5000):
                rows = s.execute(
                    select(Image.id, Vector.data)
                    .join(Vector, Vector.content_id == Image.content_id)
                    .where(Image.id.in_(part), Vector.spec_id == spec.id,
                           Vector.feature == feature).order_by(Image.id)
                ).all()  # fmt: skip
                for r in rows:
                    out_ids[filled] = r[0]
                    out[filled] = np.frombuffer(r[1], "<f4")
                    filled += 1
        order = np.argsort(out_ids[:filled], kind="stable")
        return out_ids[:filled][order], out[:filled][order]

    def image_ids(self, spec: StoredSpec, feature: str) -> np.ndarray:
        """Every image id with a vector of this feature, ascending (8 bytes per image)."""
        with self.store.snapshot() as s:
            return np.fromiter(
                s.scalars(select(Image.id).join(Vector, Vector.content_id == Image.content_id)
                          .where(Vector.spec_id == spec.id, Vector.feature == feature)
                          .order_by(Image.id)), np.int64,
            )  # fmt: skip

    def changes_since(self, spec: StoredSpec, feature: str, generation: int) -> Changes:
        with self.store.snapshot() as s:
            ids, vectors = self.of_images(spec, feature, after_generation=generation)
            removed = np.fromiter(
                s.scalars(select(Removal.image_id).where(Removal.generation > generation)),
                np.int64,
            )
        return Changes(ids, vectors, removed)

    def by_paths(
        self, spec: StoredSpec, feature: str, paths: Sequence[str]
    ) -> dict[str, tuple[int, np.ndarray]]:
        """path -> (image id, vector) for the paths the library holds."""
        from vitdex.storage.files import from_db

        found: dict[str, tuple[int, np.ndarray]] = {}
        dim = spec.dim_of(feature)
        with self.store.snapshot() as s:
            for part in chunks(paths):
                rows = s.execute(
                    select(Image.path, Image.id, Vector.data)
                    .join(Vector, Vector.content_id == Image.content_id)
                    .where(Image.path.in_([to_db(p) for p in part]), Vector.spec_id == spec.id,
                           Vector.feature == feature)
                )  # fmt: skip
                found.update((from_db(r[0]), (r[1], from_blob(r[2], dim))) for r in rows)
        return found

    def content_ids(self, spec: StoredSpec, feature: str) -> np.ndarray:
        """Every content that has a vector of this feature, by id."""
        with self.store.snapshot() as s:
            return np.fromiter(
                s.scalars(select(Vector.content_id).where(
                    Vector.spec_id == spec.id, Vector.feature == feature
                ).order_by(Vector.content_id)), np.int64,
            )  # fmt: skip

    def of_contents(self, spec: StoredSpec, feature: str, content_ids: np.ndarray) -> np.ndarray:
        """Vectors of these contents, in the given order; a content without one is an error."""
        dim = spec.dim_of(feature)
        out = np.empty((len(content_ids), dim), np.float32)
        position = {int(c): i for i, c in enumerate(content_ids)}
        found = 0
        with self.store.snapshot() as s:
            for part in chunks(position, 5000):
                rows = s.execute(
                    select(Vector.content_id, Vector.data).where(
                        Vector.content_id.in_(part), Vector.spec_id == spec.id,
                        Vector.feature == feature,
                    )
                ).all()  # fmt: skip
                out[[position[r[0]] for r in rows]] = np.frombuffer(
                    b"".join(r[1] for r in rows), "<f4"
                ).reshape(len(rows), dim)
                found += len(rows)
        if found != len(position):
            raise StorageError(
                f"{self.store.folder}: {len(position) - found} images have no stored {feature}"
                " vector; run `vitdex ingest` on their folders again"
            )
        return out
