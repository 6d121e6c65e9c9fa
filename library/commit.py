"""Ingest, stage 3: commit. Applies planned actions and embedded batches to the store, each
batch one transaction, and counts in the report only what it committed.

The generation moves only in a transaction that changes vectors (new or changed images,
removals); moves, touches and failures leave it, so a no-op rescan changes no index file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vitdex.library.plan import Action, EmbedJob, Fail, Link, Move, Remove, Touch
from vitdex.storage import NewContent, Store, StoredSpec, display

if TYPE_CHECKING:
    from vitdex.embedder import EmbedResult


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[dict] = field(default_factory=list)
    failed_earlier: list[dict] = field(default_factory=list)  # unchanged since they failed
    held_back: list[dict] = field(default_factory=list)  # folders whose removals need prune
    int8_check: dict | None = None  # fp32 vs int8 on the user's photos, for a new int8 library
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": self.failed,
            "failed_earlier": self.failed_earlier,
            "held_back": self.held_back,
            "int8_check": self.int8_check,
            "dry_run": self.dry_run,
        }

    def count(self, item: Action | EmbedJob) -> None:
        """What a committed action or job adds to the report (a dry run counts its plan)."""
        match item:
            case Move():
                self.moved += 1
            case Remove():
                self.removed += 1
            case Fail(file=file, reason=reason):
                self.failed.append({"path": display(file.path), "error": reason})
            case Link(image_id=image_id) | EmbedJob(image_id=image_id):
                if image_id is None:
                    self.added += 1
                else:
                    self.updated += 1


class Committer:
    """Writes one transaction per call to `commit`."""

    def __init__(self, store: Store, spec: StoredSpec, report: IngestReport):
        self.store = store
        self.spec = spec
        self.report = report
        self.waiting: dict[str, list[Link]] = {}  # links to contents still being embedded
        self.failed_contents: dict[str, tuple[str, str]] = {}  # sha256 -> (path, why)

    def commit(self, actions: Iterable[Action], results: list[EmbedResult[EmbedJob]]) -> None:
        now = datetime.now(UTC)
        actions = list(actions)
        changes_vectors = bool(results) or any(isinstance(a, Remove | Link) for a in actions)
        removals = [a for a in actions if isinstance(a, Remove)]
        with self.store.transaction():
            generation = self.store.bump_generation() if changes_vectors else 0
            if removals:  # one bulk statement; removals only free rows and paths, so first
                self.store.images.remove([r.image_id for r in removals], generation)
                for removal in removals:
                    self.report.count(removal)
            for action in actions:  # then: a link to a content of this batch waits for it
                self._apply(action, generation, now)
            done = [r for r in results if r.error is None]
            self._store_embedded(done, generation, now)
            for result in results:
                job = result.item
                if result.error is not None:
                    self._fail(Fail(job.file, result.error), now)
                    self.failed_contents[job.sha256] = (job.path, result.error)
                for link in self.waiting.pop(job.sha256, []):
                    self._link(link, generation)

    def _store_embedded(self, results: list[EmbedResult[EmbedJob]], generation: int, now) -> None:
        """A batch's contents, vectors, labels and images: one bulk statement each."""
        if not results:
            return
        content_ids = self.store.images.add_contents([
            NewContent(r.item.sha256, r.info.width, r.info.height, r.info.format,
                       r.info.taken_at, r.info.camera_make, r.info.camera_model)
            for r in results
        ])  # fmt: skip
        self.store.vectors.add(
            self.spec, [(content_ids[r.item.sha256], r.vectors) for r in results]
        )
        self.store.labels.add(
            self.spec, [(content_ids[r.item.sha256], r.labels) for r in results if r.labels]
        )
        new = []
        for r in results:
            job = r.item
            if job.image_id is None:
                new.append((job.file, content_ids[job.sha256]))
            else:
                self.store.images.set_content(
                    job.image_id, job.file, content_ids[job.sha256], generation
                )
            self.report.count(job)
        self.store.images.add(new, generation, now)

    def _apply(self, action: Action, generation: int, now: datetime) -> None:
        match action:
            case Touch(image_id=image_id, file=file):
                self.store.images.relocate(image_id, file)
            case Move(image_id=image_id, file=file):
                self.store.images.relocate(image_id, file)
                self.report.count(action)
            case Link():
                self._link(action, generation)
            case Fail():
                self._fail(action, now)
            case Remove():
                pass  # removed in bulk by `commit`

    def _link(self, link: Link, generation: int) -> None:
        content_id = self.store.images.content_ids([link.sha256]).get(link.sha256)
        if content_id is None and link.sha256 in self.failed_contents:
            path, error = self.failed_contents[link.sha256]
            self._fail(Fail(link.file, f"same content as {display(path)}: {error}"), now=None)
            return
        if content_id is None:  # its content is still being embedded in this run
            self.waiting.setdefault(link.sha256, []).append(link)
            return
        if link.image_id is None:
            self.store.images.add([(link.file, content_id)], generation, datetime.now(UTC))
        else:
            self.store.images.set_content(link.image_id, link.file, content_id, generation)
        self.report.count(link)

    def _fail(self, fail: Fail, now: datetime | None) -> None:
        file = fail.file
        now = now or datetime.now(UTC)
        self.store.images.record_failure(file.path, file.size, file.mtime_ns, fail.reason, now)
        self.report.count(fail)
