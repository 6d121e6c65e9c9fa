"""Export rows: the images with their facts and their vectors of several features, a page at a
time by image id, so an export of any size holds one page in memory, never the whole library."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from vitdex.storage.files import display, from_db
from vitdex.storage.images import _under
from vitdex.storage.models import Content, Image, Vector

if TYPE_CHECKING:
    from vitdex.storage.store import Store, StoredSpec

PAGE = 5_000


@dataclass(frozen=True, slots=True)
class ExportPage:
    """Up to a page of images in id order, as columns; row i of every field is one image."""

    ids: np.ndarray  # int64 image ids
    paths: list[str]  # as shown to a person: bytes that are not UTF-8 become U+FFFD
    sha256: list[str]
    width: np.ndarray  # int32
    height: np.ndarray  # int32
    format: list[str | None]
    taken_at: list[str | None]
    vectors: dict[str, np.ndarray]  # feature -> (rows, dim) float32, L2-normalised as stored

    def __len__(self) -> int:
        return len(self.ids)


class ExportRows:
    """The store's statements for an export: a count and keyset pages over the same rows."""

    def __init__(self, store: Store):
        self.store = store

    def _query(self, columns, spec: StoredSpec, features: Sequence[str], under: str | None):
        """The images that hold a vector of every feature (the ones search sees), joined once
        per feature, so one row carries the image's facts and all its vectors."""
        query = select(*columns).join(Content, Content.id == Image.content_id)
        blobs = []
        for feature in features:
            vector = aliased(Vector)
            query = query.join(
                vector,
                (vector.content_id == Image.content_id)
                & (vector.spec_id == spec.id)
                & (vector.feature == feature),
            )
            blobs.append(vector.data)
        if under is not None:
            query = query.where(_under(Image.path, under))
        return query, blobs

    def count(self, spec: StoredSpec, features: Sequence[str], *, under: str | None = None) -> int:
        query, _ = self._query([func.count(Image.id)], spec, features, under)
        with self.store.snapshot() as s:
            return s.scalar(query)

    def dim(self, spec: StoredSpec, feature: str) -> int | None:
        """The length of the feature's stored vectors (None when it has none)."""
        query = select(func.length(Vector.data)).where(
            Vector.spec_id == spec.id, Vector.feature == feature
        )
        with self.store.snapshot() as s:
            size = s.scalar(query.limit(1))
        return None if size is None else size // 4

    def pages(
        self,
        spec: StoredSpec,
        features: Sequence[str],
        *,
        under: str | None = None,
        page: int = PAGE,
    ) -> Iterator[ExportPage]:
        """Pages of at most `page` images by id (`Image.id > last`, never OFFSET). Call it inside
        `store.snapshot()` to see the same rows as a `count` made in that snapshot."""
        columns = (Image.id, Image.path, Content.sha256, Content.width, Content.height,
                   Content.format, Content.taken_at)  # fmt: skip
        query, blobs = self._query(columns, spec, features, under)
        query = query.add_columns(*blobs).order_by(Image.id).limit(page)
        last = 0
        while True:
            with self.store.snapshot() as s:
                rows = s.execute(query.where(Image.id > last)).all()
            if not rows:
                return
            yield _page(rows, features)
            last = rows[-1][0]


def _page(rows: list, features: Sequence[str]) -> ExportPage:
    n = len(rows)
    vectors = {}
    for k, feature in enumerate(features, start=7):
        flat = np.frombuffer(b"".join(r[k] for r in rows), "<f4")
        vectors[feature] = flat.reshape(n, len(flat) // n).astype(np.float32, copy=False)
    return ExportPage(
        ids=np.fromiter((r[0] for r in rows), np.int64, n),
        paths=[display(from_db(r[1])) for r in rows],
        sha256=[r[2] for r in rows],
        width=np.fromiter((r[3] for r in rows), np.int32, n),
        height=np.fromiter((r[4] for r in rows), np.int32, n),
        format=[r[5] for r in rows],
        taken_at=[r[6] for r in rows],
        vectors=vectors,
    )
