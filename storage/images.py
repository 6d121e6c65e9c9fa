"""Images, their folders, contents and failed files: every statement about what files are stored."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from vitdex.storage.database import upsert
from vitdex.storage.files import FileIdentity, from_db, to_db, under_range
from vitdex.storage.models import Content, Failure, Folder, Image, Prediction, Probe, Removal

if TYPE_CHECKING:
    from vitdex.storage.store import Store

CHUNK = 500  # values per SQL IN (...) list
PAGE = 1000


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[tuple]:
    """itertools.batched, which Python 3.11 lacks."""
    iterator = iter(items)
    while batch := tuple(islice(iterator, size)):
        yield batch


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image row with its content's facts."""

    id: int
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    generation: int
    added_at: datetime
    content_id: int
    sha256: str
    width: int
    height: int
    format: str | None
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None

    @property
    def identity(self) -> FileIdentity:
        return FileIdentity(self.path, self.device, self.inode, self.size, self.mtime_ns)


@dataclass(frozen=True, slots=True)
class FailedFile:
    path: str
    size: int
    mtime_ns: int
    error: str


@dataclass(frozen=True, slots=True)
class NewContent:
    sha256: str
    width: int
    height: int
    format: str | None
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None


_COLUMNS = (
    Image.id, Image.path, Image.device, Image.inode, Image.size, Image.mtime_ns, Image.generation,
    Image.added_at, Image.content_id, Content.sha256, Content.width, Content.height,
    Content.format, Content.taken_at, Content.camera_make, Content.camera_model,
)  # fmt: skip


def _select_images():
    return select(*_COLUMNS).join(Content, Content.id == Image.content_id)


def _image(row) -> StoredImage:
    return StoredImage(row[0], from_db(row[1]), *row[2:])


def _under(column, folder: str):
    low, high = under_range(folder)
    return (column >= low) & (column < high)


def _with_tag(query, tag: str | None):
    from vitdex.storage.labels import top_label_contents

    return query if tag is None else query.where(Image.content_id.in_(top_label_contents(tag)))


class Images:
    """The store's statements about images, folders, contents and failures."""

    def __init__(self, store: Store):
        self.store = store

    # --- reads ----------------------------------------------------------------------------------
    def count(self, under: str | None = None) -> int:
        query = select(func.count()).select_from(Image)
        if under is not None:
            query = query.where(_under(Image.path, under))
        with self.store.snapshot() as s:
            return s.scalar(query)

    def count_contents(self) -> int:
        with self.store.snapshot() as s:
            return s.scalar(select(func.count()).select_from(Content))

    def get(self, image_id: int) -> StoredImage | None:
        with self.store.snapshot() as s:
            row = s.execute(_select_images().where(Image.id == image_id)).first()
        return None if row is None else _image(row)

    def by_paths(self, paths: Sequence[str]) -> dict[str, StoredImage]:
        found: dict[str, StoredImage] = {}
        with self.store.snapshot() as s:
            for part in chunks(paths):
                rows = s.execute(_select_images().where(Image.path.in_([to_db(p) for p in part])))
                found.update((image.path, image) for image in map(_image, rows))
        return found

    def by_ids(self, ids: Iterable[int]) -> dict[int, StoredImage]:
        found: dict[int, StoredImage] = {}
        with self.store.snapshot() as s:
            for part in chunks(int(i) for i in ids):
                rows = s.execute(_select_images().where(Image.id.in_(part)))
                found.update((image.id, image) for image in map(_image, rows))
        return found

    def holders(self, shas: Iterable[str]) -> dict[str, list[StoredImage]]:
        """The images holding each of these contents."""
        found: dict[str, list[StoredImage]] = {}
        with self.store.snapshot() as s:
            for part in chunks(set(shas)):
                for image in map(
                    _image, s.execute(_select_images().where(Content.sha256.in_(part)))
                ):
                    found.setdefault(image.sha256, []).append(image)
        return found

    def stored_contents(self, shas: Iterable[str]) -> set[str]:
        found: set[str] = set()
        with self.store.snapshot() as s:
            for part in chunks(set(shas)):
                found.update(s.scalars(select(Content.sha256).where(Content.sha256.in_(part))))
        return found

    def under(self, folder: str | None = None) -> Iterator[StoredImage]:
        """Every image below `folder` (all when None), in pages by id so memory stays bounded."""
        last = 0
        while True:
            query = _select_images().where(Image.id > last).order_by(Image.id).limit(PAGE)
            if folder is not None:
                query = query.where(_under(Image.path, folder))
            with self.store.snapshot() as s:
                rows = [_image(row) for row in s.execute(query)]
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def at_path(self, path: str) -> StoredImage | None:
        return self.by_paths([path]).get(path)

    def ids(self, under: str | None = None) -> np.ndarray:
        query = select(Image.id).order_by(Image.id)
        if under is not None:
            query = query.where(_under(Image.path, under))
        with self.store.snapshot() as s:
            return np.fromiter(s.scalars(query), np.int64)

    def scope(self, under: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, their content ids), by image id."""
        query = select(Image.id, Image.content_id).order_by(Image.id)
        if under is not None:
            query = query.where(_under(Image.path, under))
        with self.store.snapshot() as s:
            rows = s.execute(query).all()
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        arr = np.asarray(rows, np.int64)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def folders(self) -> list[str]:
        """Folders that directly hold at least one image, sorted."""
        has_images = select(Image.id).where(Image.folder_id == Folder.id).exists()
        with self.store.snapshot() as s:
            return [from_db(p) for p in s.scalars(select(Folder.path).where(has_images)
                                                   .order_by(Folder.path))]  # fmt: skip

    def page(
        self,
        *,
        under: str | None = None,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        probe: str | None = None,
        label: str | None = None,
        tag: str | None = None,
    ) -> list[StoredImage]:
        """Up to `limit` images by path after the path `after`, or the last `limit` before the
        path `before` (still in path order): paging by key, never OFFSET. `tag`: only images
        whose top label (the checkpoint's own) it is."""
        query = _with_tag(_select_images(), tag)
        if under is not None:
            query = query.where(_under(Image.path, under))
        if after is not None:
            query = query.where(Image.path > to_db(after))
        if probe is not None:
            query = (
                query.join(Prediction, Prediction.image_id == Image.id)
                .join(Probe, Probe.id == Prediction.probe_id)
                .where(Probe.name == probe, Prediction.label == label)
            )
        if before is not None:
            query = query.where(Image.path < to_db(before))
        order = Image.path.desc() if before is not None and after is None else Image.path
        with self.store.snapshot() as s:
            rows = [_image(r) for r in s.execute(query.order_by(order).limit(limit))]
        return rows[::-1] if order is not Image.path else rows

    def count_page(
        self,
        *,
        under: str | None = None,
        probe: str | None = None,
        label: str | None = None,
        tag: str | None = None,
    ) -> int:
        query = _with_tag(select(func.count()).select_from(Image), tag)
        if under is not None:
            query = query.where(_under(Image.path, under))
        if probe is not None:
            query = (
                query.join(Prediction, Prediction.image_id == Image.id)
                .join(Probe, Probe.id == Prediction.probe_id)
                .where(Probe.name == probe, Prediction.label == label)
            )
        with self.store.snapshot() as s:
            return s.scalar(query)

    def failures(self, under: str | None = None, paths: Sequence[str] | None = None
                 ) -> list[FailedFile]:  # fmt: skip
        query = select(Failure.path, Failure.size, Failure.mtime_ns, Failure.error)
        if under is not None:
            query = query.where(_under(Failure.path, under))
        with self.store.snapshot() as s:
            if paths is None:
                rows = s.execute(query.order_by(Failure.path)).all()
            else:
                rows = [
                    row
                    for part in chunks(paths)
                    for row in s.execute(query.where(Failure.path.in_(map(to_db, part))))
                ]
        return [FailedFile(from_db(r[0]), r[1], r[2], r[3]) for r in rows]

    # --- writes (each inside store.transaction()) ----------------------------------------------
    def add_contents(self, contents: Sequence[NewContent]) -> dict[str, int]:
        """Insert contents (one multi-row INSERT .. RETURNING); sha256 -> content id."""
        if not contents:
            return {}
        with self.store.transaction() as s:
            rows = s.execute(
                insert(Content).returning(Content.id, Content.sha256),
                [vars_of(c) for c in contents],
            )
            return {row.sha256: row.id for row in rows}

    def content_ids(self, shas: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.store.snapshot() as s:
            for part in chunks(set(shas)):
                rows = s.execute(select(Content.sha256, Content.id).where(Content.sha256.in_(part)))
                found.update((sha, i) for sha, i in rows)
        return found

    def add(
        self, files: Sequence[tuple[FileIdentity, int]], generation: int, now: datetime
    ) -> None:
        """New images: (file, content id) pairs, all tagged with `generation`."""
        if not files:
            return
        with self.store.transaction() as s:
            folders = self._folder_ids(s, {os.path.dirname(f.path) for f, _ in files})
            s.execute(insert(Image), [
                {**_identity_values(f, folders), "content_id": content_id,
                 "generation": generation, "added_at": now}
                for f, content_id in files
            ])  # fmt: skip
            self._clear_failures(s, [f.path for f, _ in files])

    def set_content(
        self, image_id: int, file: FileIdentity, content_id: int, generation: int
    ) -> None:
        """A changed file keeps its image id; its new vectors are tagged with `generation`."""
        with self.store.transaction() as s:
            folders = self._folder_ids(s, {os.path.dirname(file.path)})
            s.execute(update(Image).where(Image.id == image_id).values(
                **_identity_values(file, folders), content_id=content_id, generation=generation
            ))  # fmt: skip
            self._clear_failures(s, [file.path])

    def relocate(self, image_id: int, file: FileIdentity) -> None:
        """The same content at a new path or with new file facts (a move, a touch): its vectors
        and id stay, so no generation is needed."""
        with self.store.transaction() as s:
            folders = self._folder_ids(s, {os.path.dirname(file.path)})
            s.execute(
                update(Image).where(Image.id == image_id).values(**_identity_values(file, folders))
            )
            self._clear_failures(s, [file.path])

    def remove(self, ids: Sequence[int], generation: int) -> None:
        """Remove images (their predictions go with them) and leave tombstones for the indexes."""
        with self.store.transaction() as s:
            for part in chunks(ids):
                s.execute(delete(Image).where(Image.id.in_(part)))
                s.execute(upsert(self.store.engine, Removal, ["image_id"], ["generation"]),
                          [{"image_id": i, "generation": generation} for i in part])  # fmt: skip

    def prune(self) -> None:
        """Drop contents no image holds (their vectors cascade) and folders with no images."""
        with self.store.transaction() as s:
            s.execute(delete(Content).where(~Content.id.in_(select(Image.content_id))))
            s.execute(delete(Folder).where(~Folder.id.in_(select(Image.folder_id))))

    def record_failure(self, path: str, size: int, mtime_ns: int, error: str, now: datetime
                       ) -> None:  # fmt: skip
        with self.store.transaction() as s:
            s.merge(Failure(path=to_db(path), size=size, mtime_ns=mtime_ns, error=error,
                            failed_at=now))  # fmt: skip

    def forget_failures(self, paths: Sequence[str]) -> None:
        with self.store.transaction() as s:
            self._clear_failures(s, paths)

    @staticmethod
    def _clear_failures(s, paths: Sequence[str]) -> None:
        for part in chunks(paths):
            s.execute(delete(Failure).where(Failure.path.in_([to_db(p) for p in part])))

    @staticmethod
    def _folder_ids(s, folders: set[str]) -> dict[str, int]:
        raw = {to_db(f): f for f in folders}
        found = {
            p: i
            for p, i in s.execute(select(Folder.path, Folder.id).where(Folder.path.in_(list(raw))))
        }
        missing = [p for p in raw if p not in found]
        if missing:
            rows = s.execute(insert(Folder).returning(Folder.path, Folder.id),
                             [{"path": p} for p in missing])  # fmt: skip
            found.update((p, i) for p, i in rows)
        return {raw[p]: i for p, i in found.items()}


def _identity_values(file: FileIdentity, folders: dict[str, int]) -> dict:
    return {"path": to_db(file.path), "folder_id": folders[os.path.dirname(file.path)],
            "device": file.device, "inode": file.inode, "size": file.size,
            "mtime_ns": file.mtime_ns}  # fmt: skip


def vars_of(content: NewContent) -> dict:
    return {name: getattr(content, name) for name in NewContent.__slots__}
