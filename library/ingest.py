"""Incremental, move-aware, crash-safe ingest, in three typed stages:

    plan (vitdex.library.plan) -> embed (an executor) -> commit (vitdex.library.commit)

Every found file is classified against the store before anything is decoded: unchanged files are
not opened, touched files are hashed but not embedded, moved files keep their image id (their
FAISS id) and vectors, identical copies share one content embedded once. Each batch of results
commits in one transaction; after a kill -9 the next run finds what is missing and finishes it.
At the end every indexed feature's FAISS file is brought up to date, under the write lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from vitdex.library.commit import Committer, IngestReport
from vitdex.library.errors import NotFoundError
from vitdex.library.executor import Executor, LocalExecutor
from vitdex.library.plan import Action, EmbedJob, Planner
from vitdex.library.walk import FoundFile, canonical_roots, walk_files
from vitdex.storage import chunks, display

if TYPE_CHECKING:
    from vitdex.library.library import Library

log = logging.getLogger(__name__)

MAX_QUEUED_ACTIONS = 2048  # cheap changes (moves, links, failures) commit at least this often
Progress = Callable[[str, int], None]

__all__ = ["IngestReport", "ingest"]


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
    executor: Executor | None = None,
) -> IngestReport:
    """Bring the library in line with the files below `paths`; see the module docstring."""
    from vitdex.embedder import IMAGE_SUFFIXES, sniff_image_format

    paths = list(paths)
    for path in paths:
        if not os.path.lexists(os.path.expanduser(os.fspath(path))):
            raise NotFoundError(f"{display(os.fspath(path))}: no such file or folder")
    roots = canonical_roots(paths)
    report = IngestReport(dry_run=dry_run)
    tick = progress or (lambda _event, _n: None)

    def found() -> Iterator[FoundFile]:
        for item in walk_files(roots, frozenset(IMAGE_SUFFIXES)):
            tick("found", 1)
            yield item

    planner = Planner(library.store, found(), sniff_image_format)
    index_features = list(index_features)
    if dry_run:
        for feature in index_features:
            library.check_feature(feature)
        for item in chain(planner.plan(), planner.removals(roots)):
            report.count(item)
        _finish_report(report, planner)
        return report

    with library.writing(wait=wait):
        if model is not None or runtime is not None or library.store.spec() is None:
            library.embedder(model, device=device, runtime=runtime)  # checks the spec first
        for feature in index_features:
            library.check_feature(feature)
        committer = Committer(library.store, library.require_spec(), report)
        actions: list[Action] = []

        def jobs() -> Iterator[EmbedJob]:
            for item in planner.plan():
                if isinstance(item, EmbedJob):
                    yield item
                else:
                    actions.append(item)
                    if len(actions) >= MAX_QUEUED_ACTIONS:
                        committer.commit(_drain(actions), [])

        stream = jobs()
        first = next(stream, None)
        if first is not None:
            if executor is None:
                embedder = library.embedder(model, device=device, runtime=runtime)
                executor = LocalExecutor(embedder, batch_size=batch_size, workers=workers)
            for batch in chunks(executor.embed(chain([first], stream)), commit_every):
                committer.commit(_drain(actions), list(batch))
                tick("embedded", len(batch))
        committer.commit(_drain(actions), [])
        for removals in chunks(planner.removals(roots), 500):
            committer.commit(removals, [])
        library.store.images.forget_failures(_vanished_failures(library, roots))
        library.store.images.prune()
        _finish_report(report, planner)
        library.indexes.refresh(list(library.require_spec().data.get("features", ["cls"])))
    return report


def _drain(actions: list[Action]) -> list[Action]:
    taken = actions[:]
    actions.clear()
    return taken


def _finish_report(report: IngestReport, planner: Planner) -> None:
    report.unchanged = planner.state.unchanged
    report.failed_earlier = [
        {"path": display(f.path), "error": f.error} for f in planner.state.failed_earlier
    ]


def _vanished_failures(library: Library, roots: list[str]) -> list[str]:
    """Failed files below `roots` that no longer exist: no longer worth listing."""
    gone = []
    for root in roots:
        under = root if os.path.isdir(root) else None
        for failure in library.store.images.failures(under=under,
                                                     paths=None if under else [root]):  # fmt: skip
            if not os.path.lexists(failure.path):
                gone.append(failure.path)
    return gone
