"""Incremental, move-aware, crash-safe ingest of folders into a library.

Every file found is classified against the database before anything is decoded:
- same path, same size and mtime: unchanged, not opened again;
- new path whose content hash belongs to an image whose file is gone: a move, the image keeps
  its id (its FAISS id) and vectors under the new path;
- new path whose content is already stored at a live path: an identical copy, a new image that
  shares the stored vectors (computed once);
- anything else is decoded and embedded, in batches, each batch one transaction.
Files below the ingested folders that no longer exist are removed at the end. The FAISS files are
brought up to date once, at the end of the run, never per batch; after a crash the next run (or
search) finds them behind the database's generation counter and catches up from SQLite.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, update

from vitdex.library.errors import NotFoundError
from vitdex.library.lock import write_lock
from vitdex.library.walk import FoundFile, walk_files
from vitdex.storage import Content, Failure, Image, Vector, to_blob

if TYPE_CHECKING:
    from vitdex.embedder import EmbedResult
    from vitdex.library.library import Library

log = logging.getLogger(__name__)

PLAN_CHUNK = 256
HASH_WORKERS = min(8, os.cpu_count() or 1)
MAX_QUEUED_ACTIONS = 2048  # cheap changes (moves, links, failures) commit at least this often
Progress = Callable[[str, int], None]


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[dict] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": self.failed,
            "dry_run": self.dry_run,
        }


@dataclass(slots=True)
class EmbedJob:
    path: str
    size: int
    mtime_ns: int
    sha256: str
    image_id: int | None  # set when the path is already an image whose content changed


def batched(items: Iterable, size: int) -> Iterator[tuple]:
    """itertools.batched, which Python 3.11 lacks."""
    iterator = iter(items)
    while batch := tuple(islice(iterator, size)):
        yield batch


def file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sha256_or_error(path: str) -> str | OSError:
    try:
        return file_sha256(path)
    except OSError as exc:
        return exc


def under_clause(column, folder: Path):
    """`column` is a path below `folder`, written as a range so SQLite uses the unique index."""
    prefix = str(folder).rstrip(os.sep) + os.sep
    return column.startswith(prefix, autoescape=True)


class _Planner:
    """Classifies found files (reads only) and queues the cheap changes for the writer."""

    def __init__(
        self,
        library: Library,
        found: Iterable[FoundFile],
        report: IngestReport,
    ):
        from vitdex.embedder import sniff_image_format

        self.library = library
        self.flush: Callable[[], None] | None = None  # commits queued actions; unset in dry runs
        self.found = found
        self.report = report
        self.sniff = sniff_image_format
        self.actions: deque[tuple] = deque()  # drained by the writer between batches
        self.claimed: set[int] = set()  # image ids already taken by a move in this run
        self.pending: dict[str, str] = {}  # sha256 -> path being embedded in this run
        self.hasher = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="vitdex-hash")
        self.stored: set[str] = set()  # of the chunk being planned: see _lookup_contents
        self.holders: dict[str, list[tuple[int, str]]] = {}

    def jobs(self) -> Iterator[EmbedJob]:
        try:
            for chunk in batched(self.found, PLAN_CHUNK):
                if self.flush and len(self.actions) >= MAX_QUEUED_ACTIONS:
                    self.flush()
                yield from self._plan_chunk(chunk)
        finally:
            self.hasher.shutdown(wait=False, cancel_futures=True)

    def _plan_chunk(self, chunk: tuple[FoundFile, ...]) -> Iterator[EmbedJob]:
        paths = [f.path for f in chunk]
        with self.library.sessions() as session:
            images = {
                row.path: row
                for row in session.execute(
                    select(Image.id, Image.path, Image.size, Image.mtime_ns, Content.sha256)
                    .join(Content)
                    .where(Image.path.in_(paths))
                )
            }
            failures = {
                row.path: row
                for row in session.execute(
                    select(Failure.path, Failure.size, Failure.mtime_ns).where(
                        Failure.path.in_(paths)
                    )
                )
            }
        candidates = []
        for found in chunk:
            known = images.get(found.path)
            if known and (known.size, known.mtime_ns) == (found.size, found.mtime_ns):
                self.report.unchanged += 1
                continue
            failure = failures.get(found.path)
            if failure and (failure.size, failure.mtime_ns) == (found.size, found.mtime_ns):
                continue  # failed before and unchanged since: not retried, still listed by status
            if found.is_folder:
                self._fail(found, "a folder named like an image file")
                continue
            if not found.claims_image and self.sniff(found.path) is None:
                continue  # not an image by name or by content: not ours
            candidates.append(found)
        # hashlib and file reads release the GIL: hash the chunk in parallel, off the path of
        # the decode workers and the model, then look its contents up in two queries.
        hashes = list(self.hasher.map(_sha256_or_error, [f.path for f in candidates]))
        self._lookup_contents([sha for sha in hashes if not isinstance(sha, OSError)])
        for found, sha in zip(candidates, hashes, strict=True):
            known = images.get(found.path)
            if isinstance(sha, OSError):
                self._fail(found, f"cannot read ({sha.strerror or sha})")
                continue
            if known:
                if sha == known.sha256:  # touched, not changed
                    self.actions.append(("touch", known.id, found.size, found.mtime_ns))
                    self.report.unchanged += 1
                    continue
                self.report.updated += 1
                yield from self._content_job(found, sha, image_id=known.id)
                continue
            moved_from = self._vanished_image_with(sha)
            if moved_from is not None:
                self.claimed.add(moved_from)
                self.actions.append(("move", moved_from, found.path, found.size, found.mtime_ns))
                self.report.moved += 1
                continue
            self.report.added += 1
            yield from self._content_job(found, sha, image_id=None)

    def _lookup_contents(self, shas: list[str]) -> None:
        """Which of the chunk's contents are stored, and the images that hold them.

        Read once per chunk: what the run writes meanwhile is in `pending` and `claimed`, and its
        new images' files exist, so neither answer goes stale within the chunk.
        """
        self.stored = set()
        self.holders = {}
        if not shas:  # a rescan of unchanged files: no query at all
            return
        with self.library.sessions() as session:
            for part in batched(set(shas), 500):
                self.stored.update(
                    session.scalars(select(Content.sha256).where(Content.sha256.in_(part)))
                )
                rows = session.execute(
                    select(Image.id, Image.path, Content.sha256)
                    .join(Content)
                    .where(Content.sha256.in_(part))
                )
                for row in rows:
                    self.holders.setdefault(row.sha256, []).append((row.id, row.path))

    def _content_job(self, found: FoundFile, sha: str, image_id: int | None) -> Iterator[EmbedJob]:
        """Embed a content once: a content already stored, or being embedded, is only linked."""
        if sha in self.stored or sha in self.pending:
            self.actions.append(("link", sha, image_id, found.path, found.size, found.mtime_ns))
            return
        self.pending[sha] = found.path
        yield EmbedJob(found.path, found.size, found.mtime_ns, sha, image_id)

    def _vanished_image_with(self, sha: str) -> int | None:
        """An image with this content whose file is gone: the file was moved or renamed."""
        for image_id, path in self.holders.get(sha, ()):
            if image_id not in self.claimed and not os.path.exists(path):
                return image_id
        return None

    def _fail(self, found: FoundFile, reason: str) -> None:
        self.actions.append(("fail", found.path, found.size, found.mtime_ns, reason))
        self.report.failed.append({"path": found.path, "error": reason})


class _Writer:
    """Applies planned changes and embedded batches, each batch one transaction."""

    def __init__(self, library: Library, spec_id: int | None):
        self.library = library
        self.spec_id = spec_id
        self.deferred: list[tuple] = []  # links to contents still being embedded

    def commit(
        self, actions: deque[tuple], results: list[EmbedResult], report: IngestReport
    ) -> None:
        now = datetime.now(UTC)
        with self.library.sessions.begin() as session:
            generation = self.library.next_generation(session)
            embedded = []
            for result in results:
                job: EmbedJob = result.item
                if result.error is not None:
                    self._record_failure(
                        session, job.path, job.size, job.mtime_ns, result.error, now
                    )
                    report.failed.append({"path": job.path, "error": result.error})
                    report.added -= job.image_id is None
                    report.updated -= job.image_id is not None
                    continue
                embedded.append(result)
            if embedded:
                self._store_embedded(session, embedded, generation, now)
            while actions:
                self._apply(session, actions.popleft(), generation, now)

    def _store_embedded(self, session, results: list[EmbedResult], generation: int, now) -> None:
        """A batch's contents, vectors and images: one bulk statement each (executemany).

        SQLAlchemy sends the contents as one multi-row INSERT .. RETURNING ("insertmanyvalues");
        ids are matched back by sha256, which is unique, so row order does not matter.
        """
        rows = [
            {"sha256": r.item.sha256, "width": r.info.width, "height": r.info.height,
             "format": r.info.format, "taken_at": r.info.taken_at,
             "camera_make": r.info.camera_make, "camera_model": r.info.camera_model}
            for r in results
        ]  # fmt: skip
        inserted = session.execute(insert(Content).returning(Content.id, Content.sha256), rows)
        content_ids = {row.sha256: row.id for row in inserted}
        session.execute(
            insert(Vector),
            [
                {"content_id": content_ids[r.item.sha256], "spec_id": self.spec_id,
                 "feature": name, "data": to_blob(vector)}
                for r in results
                for name, vector in r.vectors.items()
            ],
        )  # fmt: skip
        new_images = []
        for r in results:
            job: EmbedJob = r.item
            values = {"path": job.path, "size": job.size, "mtime_ns": job.mtime_ns,
                      "content_id": content_ids[job.sha256], "generation": generation}  # fmt: skip
            if job.image_id is None:
                new_images.append({"added_at": now, **values})
            else:  # a changed file keeps its image id: rare, one UPDATE each
                session.execute(update(Image).where(Image.id == job.image_id).values(**values))
        if new_images:
            session.execute(insert(Image), new_images)
        session.execute(delete(Failure).where(Failure.path.in_([r.item.path for r in results])))

    def finish(self) -> None:
        """Apply links whose content was embedded later in the run."""
        if self.deferred:
            pending, self.deferred = deque(self.deferred), []
            self.commit(pending, [], IngestReport())

    def _apply(self, session, action: tuple, generation: int, now: datetime) -> None:
        kind, *args = action
        if kind == "touch":
            image_id, size, mtime_ns = args
            session.execute(
                update(Image).where(Image.id == image_id).values(size=size, mtime_ns=mtime_ns)
            )
        elif kind == "move":
            image_id, path, size, mtime_ns = args
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(path=path, size=size, mtime_ns=mtime_ns)
            )
            session.execute(delete(Failure).where(Failure.path == path))
        elif kind == "link":
            sha, image_id, path, size, mtime_ns = args
            content_id = session.scalar(select(Content.id).where(Content.sha256 == sha))
            if content_id is None:
                self.deferred.append(action)
                return
            self._set_image(session, image_id, path, size, mtime_ns, content_id, generation, now)
        elif kind == "fail":
            path, size, mtime_ns, reason = args
            self._record_failure(session, path, size, mtime_ns, reason, now)

    @staticmethod
    def _set_image(session, image_id, path, size, mtime_ns, content_id, generation, now) -> None:
        values = {
            "path": path,
            "size": size,
            "mtime_ns": mtime_ns,
            "content_id": content_id,
            "generation": generation,
        }
        if image_id is None:
            session.execute(insert(Image).values(added_at=now, **values))
        else:
            session.execute(update(Image).where(Image.id == image_id).values(**values))
        session.execute(delete(Failure).where(Failure.path == path))

    @staticmethod
    def _record_failure(session, path, size, mtime_ns, reason, now) -> None:
        session.merge(Failure(path=path, size=size, mtime_ns=mtime_ns, error=reason, failed_at=now))


def ingest(
    library: Library,
    paths: Iterable[str | Path],
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    commit_every: int = 64,
    dry_run: bool = False,
    wait: bool = False,
    index_features: Iterable[str] = ("cls",),
    progress: Progress | None = None,
) -> IngestReport:
    """Bring the library in line with the files below `paths`; see the module docstring."""
    from vitdex.embedder import IMAGE_SUFFIXES

    roots = [Path(p).expanduser().absolute() for p in paths]
    for root in roots:
        if not os.path.lexists(root):
            raise NotFoundError(f"{root}: no such file or folder")
    report = IngestReport(dry_run=dry_run)
    tick = progress or (lambda _event, _n: None)

    def found() -> Iterator[FoundFile]:
        for item in walk_files(roots, frozenset(IMAGE_SUFFIXES)):
            tick("found", 1)
            yield item

    if dry_run:
        for _job in _Planner(library, found(), report).jobs():
            pass
        report.removed = sum(1 for _ in _vanished_images(library, roots))
        return report

    with write_lock(library.folder, wait=wait):
        if model is not None or runtime is not None or library.spec_row is None:
            library.embedder(model, device=device, runtime=runtime)  # checks the spec first
        writer = _Writer(library, library.spec_row.id if library.spec_row else None)
        planner = _Planner(library, found(), report)
        planner.flush = lambda: writer.commit(planner.actions, [], report)
        jobs = planner.jobs()
        first = next(jobs, None)
        if first is not None:
            embedder = library.embedder(model, device=device, runtime=runtime)
            writer.spec_id = library.spec_row.id
            for feature in index_features:
                embedder.check_feature(feature)
            results = embedder.embed_files(
                _chain_first(first, jobs),
                lambda job: Path(job.path),
                batch_size=batch_size,
                workers=workers,
            )
            for batch in batched(results, commit_every):
                writer.commit(planner.actions, list(batch), report)
                tick("embedded", len(batch))
        writer.commit(planner.actions, [], report)
        writer.finish()
        report.removed = _remove_vanished(library, roots)
        _refresh_indexes(library, index_features)
    return report


def _chain_first(first: EmbedJob, rest: Iterator[EmbedJob]) -> Iterator[EmbedJob]:
    yield first
    yield from rest


def _vanished_images(library: Library, roots: list[Path]) -> Iterator[int]:
    """Ids of images below `roots` whose file is gone, read in pages so memory stays bounded."""
    for root in roots:
        clause = under_clause(Image.path, root) if root.is_dir() else Image.path == str(root)
        last = 0
        while True:
            with library.sessions() as session:
                rows = session.execute(
                    select(Image.id, Image.path)
                    .where(clause, Image.id > last)
                    .order_by(Image.id)
                    .limit(1000)
                ).all()
            if not rows:
                break
            last = rows[-1].id
            for row in rows:
                if not os.path.isfile(row.path):
                    yield row.id


def _remove_vanished(library: Library, roots: list[Path]) -> int:
    removed = 0
    for ids in batched(_vanished_images(library, roots), 500):
        with library.sessions.begin() as session:
            library.next_generation(session)
            session.execute(delete(Image).where(Image.id.in_(ids)))
        removed += len(ids)
    with library.sessions.begin() as session:
        # Contents no image points at any more (their files changed or left) and their vectors go.
        session.execute(delete(Content).where(~Content.id.in_(select(Image.content_id))))
        for root in roots:
            gone = [
                path
                for path in session.scalars(
                    select(Failure.path).where(
                        under_clause(Failure.path, root)
                        if root.is_dir()
                        else Failure.path == str(root)
                    )
                )
                if not os.path.lexists(path)
            ]
            if gone:
                session.execute(delete(Failure).where(Failure.path.in_(gone)))
    return removed


def _refresh_indexes(library: Library, features: Iterable[str]) -> None:
    from vitdex.index.sync import synced_index

    for feature in features:
        synced_index(library, feature, save=True)
