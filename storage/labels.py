"""The checkpoint's own labels of each content (top-k, with probabilities), and tags: the images
whose top label is a given one. Labels belong to contents, so identical copies share them and
they go when their content goes (cascade)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy import func, insert, select

from vitdex.storage.files import from_db, to_db
from vitdex.storage.images import _under, chunks
from vitdex.storage.models import Image, Label

if TYPE_CHECKING:
    from vitdex.storage.store import Store, StoredSpec

TOP = 1  # the rank of an image's top label: what a tag is


class ScoredLabel(Protocol):
    """What `add` stores: a label and its probability (the embedder's Label is one)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class StoredLabel:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class TagCount:
    """A top label and how many images have it."""

    label: str
    count: int


@dataclass(frozen=True, slots=True)
class TaggedImage:
    """An image whose top label is the tag, with that label's probability."""

    image_id: int
    score: float


def tag_key(text: str) -> str:
    """What labels are matched by: case-insensitive, exact otherwise."""
    return text.strip().casefold()


def top_label_contents(tag: str):
    """The contents whose top label is `tag` (a subquery, for other repositories' filters)."""
    return select(Label.content_id).where(Label.rank == TOP, Label.label_key == tag_key(tag))


class Labels:
    """The store's statements about the checkpoint's labels."""

    def __init__(self, store: Store):
        self.store = store

    def add(self, spec: StoredSpec, rows: Sequence[tuple[int, Sequence[ScoredLabel]]]) -> None:
        """Labels of new contents: (content id, labels best first) pairs, one bulk INSERT."""
        values = [
            {"content_id": content_id, "spec_id": spec.id, "rank": rank, "label": item.label,
             "label_key": tag_key(item.label), "score": float(item.score)}
            for content_id, labels in rows for rank, item in enumerate(labels, start=1)
        ]  # fmt: skip
        if not values:
            return
        with self.store.transaction() as s:
            s.execute(insert(Label), values)

    def of_paths(self, spec: StoredSpec, paths: Sequence[str]) -> dict[str, list[StoredLabel]]:
        """path -> its labels, best first, for the stored images that have labels."""
        found: dict[str, list[StoredLabel]] = {}
        with self.store.snapshot() as s:
            for part in chunks(paths):
                rows = s.execute(
                    select(Image.path, Label.label, Label.score)
                    .join(Label, Label.content_id == Image.content_id)
                    .where(Image.path.in_([to_db(p) for p in part]), Label.spec_id == spec.id)
                    .order_by(Image.path, Label.rank)
                )  # fmt: skip
                for path, label, score in rows:
                    found.setdefault(from_db(path), []).append(StoredLabel(label, score))
        return found

    def of_image(self, spec: StoredSpec, image_id: int) -> list[StoredLabel]:
        with self.store.snapshot() as s:
            rows = s.execute(
                select(Label.label, Label.score)
                .join(Image, Image.content_id == Label.content_id)
                .where(Image.id == image_id, Label.spec_id == spec.id)
                .order_by(Label.rank)
            )  # fmt: skip
            return [StoredLabel(label, score) for label, score in rows]

    def tags(self) -> list[TagCount]:
        """Every top label the images have, with how many have it, most common first (one
        statement: a library holds the labels of its one spec)."""
        count = func.count(Image.id)
        with self.store.snapshot() as s:
            rows = s.execute(
                select(Label.label, count)
                .join(Image, Image.content_id == Label.content_id)
                .where(Label.rank == TOP)
                .group_by(Label.label).order_by(count.desc(), Label.label)
            )  # fmt: skip
            return [TagCount(label, n) for label, n in rows]

    def tagged(
        self,
        spec: StoredSpec,
        tag: str,
        *,
        under: str | None = None,
        min_score: float | None = None,
        limit: int | None = None,
    ) -> list[TaggedImage]:
        """The images (below `under`) whose top label is `tag` (any case) with at least
        `min_score`, most probable first, then by id."""
        query = (
            select(Image.id, Label.score)
            .join(Image, Image.content_id == Label.content_id)
            .where(Label.spec_id == spec.id, Label.rank == TOP, Label.label_key == tag_key(tag))
            .order_by(Label.score.desc(), Image.id)
            .limit(limit)
        )
        if under is not None:
            query = query.where(_under(Image.path, under))
        if min_score is not None:
            query = query.where(Label.score >= min_score)
        with self.store.snapshot() as s:
            return [TaggedImage(image_id, score) for image_id, score in s.execute(query)]

    def tagged_ids(self, spec: StoredSpec, tag: str) -> np.ndarray:
        """The ids of the images whose top label is `tag`, sorted (a FAISS id filter)."""
        with self.store.snapshot() as s:
            return np.fromiter(
                s.scalars(
                    select(Image.id)
                    .where(Image.content_id.in_(top_label_contents(tag)
                                                .where(Label.spec_id == spec.id)))
                    .order_by(Image.id)
                ), np.int64,
            )  # fmt: skip

    def count(self, spec: StoredSpec) -> int:
        """How many contents have labels: 0 when the model has no head (or none were stored)."""
        with self.store.snapshot() as s:
            return s.scalar(select(func.count()).where(Label.spec_id == spec.id, Label.rank == TOP))
