"""Ingest, stage 1: plan. Which found file needs what, decided against a snapshot of the store.

`classify` is a pure function of one chunk of found files and what the store holds for them
(`Known`); it returns typed actions, and the files whose content must be embedded as jobs. The
`Planner` feeds it chunk by chunk (so 1M files stream in bounded memory), reading the store and
hashing files, and keeps the run's own state: contents being embedded, images claimed by moves.
A dry run executes the same plan and commits nothing, so it reports what a real run would do.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vitdex.library.walk import FoundFile
from vitdex.storage import FailedFile, FileIdentity, Store, StoredImage, chunks, open_regular

PLAN_CHUNK = 256
HASH_WORKERS = min(8, os.cpu_count() or 1)


# --- actions: each applied by one function of the commit stage ------------------------------------
@dataclass(frozen=True, slots=True)
class Touch:
    """Same content, new file facts (mtime, inode): nothing to embed, no generation."""

    image_id: int
    file: FileIdentity


@dataclass(frozen=True, slots=True)
class Move:
    """An image whose file is gone, found again at a new path: it keeps its id and vectors."""

    image_id: int
    file: FileIdentity


@dataclass(frozen=True, slots=True)
class Link:
    """A file whose content is stored (or being embedded in this run): no embedding.
    `image_id` is set when the path already was an image with another content."""

    file: FileIdentity
    sha256: str
    image_id: int | None


@dataclass(frozen=True, slots=True)
class Fail:
    file: FileIdentity
    reason: str


@dataclass(frozen=True, slots=True)
class Remove:
    """An image below an ingested folder whose file is gone."""

    image_id: int
    path: str


Action = Touch | Move | Link | Fail | Remove


@dataclass(frozen=True, slots=True)
class EmbedJob:
    """A content to decode and embed; `image_id` set when the path's content changed."""

    file: FileIdentity
    sha256: str
    image_id: int | None

    @property
    def path(self) -> str:
        return self.file.path


@dataclass
class Known:
    """What the store holds for one chunk of found files (read in one snapshot)."""

    images: dict[str, StoredImage]  # by path
    failures: dict[str, FailedFile]  # by path
    holders: dict[str, list[StoredImage]] = field(default_factory=dict)  # by sha256
    stored: set[str] = field(default_factory=set)  # sha256 of stored contents


@dataclass
class RunState:
    """What the run itself decided so far, which the store does not know yet."""

    pending: set[str] = field(default_factory=set)  # contents being embedded
    claimed: set[int] = field(default_factory=set)  # image ids taken by a move
    unchanged: int = 0
    failed_earlier: list[FailedFile] = field(default_factory=list)


def needs_hash(found: FoundFile, known: Known) -> bool:
    """Whether the file must be hashed to be classified (anything not plainly unchanged)."""
    image = known.images.get(found.path)
    if found.problem is not None or (image is not None and _same_facts(image, found.file)):
        return False
    return not _failed_unchanged(known.failures.get(found.path), found.file)


def classify(
    found: FoundFile,
    sha: str | OSError | None,
    known: Known,
    state: RunState,
    gone: Callable[[StoredImage], bool],
) -> Action | EmbedJob | None:
    """The action for one found file, or an embed job, or None (unchanged, or not ours)."""
    image = known.images.get(found.path)
    failure = known.failures.get(found.path)
    if image is not None and _same_facts(image, found.file):
        state.unchanged += 1
        return None
    if _failed_unchanged(failure, found.file):
        state.failed_earlier.append(failure)
        return None
    if found.problem is not None:
        return Fail(found.file, found.problem)
    if sha is None:  # not an image by name or by content: not ours
        return None
    if isinstance(sha, OSError):
        return Fail(found.file, f"cannot read ({sha.strerror or sha})")
    if image is not None:
        if sha == image.sha256:
            state.unchanged += 1
            return Touch(image.id, found.file)
        return _content(found.file, sha, image.id, known, state)
    for holder in known.holders.get(sha, ()):
        if holder.id not in state.claimed and gone(holder):
            state.claimed.add(holder.id)
            return Move(holder.id, found.file)
    return _content(found.file, sha, None, known, state)


def _content(
    file: FileIdentity, sha: str, image_id: int | None, known: Known, state: RunState
) -> Link | EmbedJob:
    """Embed a content once: one already stored, or being embedded, is only linked."""
    if sha in known.stored or sha in state.pending:
        return Link(file, sha, image_id)
    state.pending.add(sha)
    return EmbedJob(file, sha, image_id)


def _failed_unchanged(failure: FailedFile | None, file: FileIdentity) -> bool:
    """It failed before and has not changed since: not retried, still listed by status."""
    return failure is not None and (failure.size, failure.mtime_ns) == (file.size, file.mtime_ns)


def _same_facts(image: StoredImage, file: FileIdentity) -> bool:
    return (image.size, image.mtime_ns, image.device, image.inode) == (
        file.size, file.mtime_ns, file.device, file.inode,
    )  # fmt: skip


def file_is_gone(image: StoredImage) -> bool:
    """The stored path no longer holds a regular file (deleted, or replaced by a link)."""
    try:
        return not stat.S_ISREG(os.lstat(image.path).st_mode)
    except OSError:
        return True


def file_sha256(path: str) -> str:
    with open_regular(path) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sha256_or_error(path: str) -> str | OSError:
    try:
        return file_sha256(path)
    except OSError as exc:
        return exc


class Planner:
    """Streams found files through `classify`, chunk by chunk, against the store."""

    def __init__(
        self,
        store: Store,
        found: Iterable[FoundFile],
        sniff: Callable[[str], str | None],
    ):
        self.store = store
        self.found = found
        self.sniff = sniff
        self.state = RunState()

    def plan(self) -> Iterator[Action | EmbedJob]:
        hasher = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="vitdex-hash")
        try:
            for chunk in chunks(self.found, PLAN_CHUNK):
                yield from self._chunk(chunk, hasher)
        finally:
            hasher.shutdown(wait=False, cancel_futures=True)

    def _chunk(self, chunk: tuple[FoundFile, ...], hasher) -> Iterator[Action | EmbedJob]:
        paths = [f.path for f in chunk]
        known = Known(
            images=self.store.images.by_paths(paths),
            failures={f.path: f for f in self.store.images.failures(paths=paths)},
        )
        # Hash what must be (hashlib and reads release the GIL: in parallel), skipping files
        # that are not images by name or content; then look the contents up in two queries.
        todo = [
            f for f in chunk
            if needs_hash(f, known) and (f.claims_image or self._sniff(f.path))
        ]  # fmt: skip
        paths_to_hash = [f.path for f in todo]
        hashes = dict(zip(paths_to_hash, hasher.map(_sha256_or_error, paths_to_hash), strict=True))
        shas = [sha for sha in hashes.values() if isinstance(sha, str)]
        if shas:
            known.holders = self.store.images.holders(shas)
            known.stored = self.store.images.stored_contents(shas)
        for found in chunk:
            action = classify(found, hashes.get(found.path), known, self.state, file_is_gone)
            if action is not None:
                yield action

    def _sniff(self, path: str) -> bool:
        """Whether a file not named like an image is one by its first bytes."""
        from vitdex.embedder.errors import DecodeError

        try:
            return self.sniff(path) is not None
        except DecodeError:  # replaced by a FIFO or device since the walk: not ours
            return False

    def removals(self, roots: list[str]) -> Iterator[Remove]:
        """Images below `roots` whose file is gone and that no move of this run took."""
        for root in roots:
            if os.path.isdir(root):
                images = self.store.images.under(root)
            else:
                images = filter(None, [self.store.images.at_path(root)])
            for image in images:
                if image.id not in self.state.claimed and file_is_gone(image):
                    yield Remove(image.id, image.path)
