"""Incremental, move-aware, crash-safe ingest, in three typed stages:

    plan (vitdex.library.plan) -> embed (an executor) -> commit (vitdex.library.commit)

Every found file is classified against the store before anything is decoded: unchanged files are
not opened, touched files are hashed but not embedded, moved files keep their image id (their
FAISS id) and vectors, identical copies share one content embedded once. Each batch of results
commits in one transaction; after a kill -9 the next run finds what is missing and finishes it.
Images below an ingested folder whose files are gone are removed at the end, unless more than
half of the folder's images would go (an unmounted drive looks like an empty folder): those wait
for `prune=True`. At the end every indexed feature's FAISS file is brought up to date, under the
write lock. `forget` removes the images below a path whether or not it exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vitdex.library.commit import Committer, IngestReport
from vitdex.library.errors import NotFoundError
from vitdex.library.executor import Executor, LocalExecutor
from vitdex.library.plan import Action, EmbedJob, Planner, Remove
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
    prune: bool = False,
    index_features: Iterable[str] = ("cls",),
    features: Iterable[str] | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> IngestReport:
    """Bring the library in line with the files below `paths`; see the module docstring.

    `features` choose what a new library stores; on an existing library each must be one it
    stores (it goes on making all of its own).
    """
    from vitdex.embedder import IMAGE_SUFFIXES, sniff_image_format

    paths = list(paths)
    for path in paths:
        if not os.path.lexists(os.path.expanduser(os.fspath(path))):
            raise NotFoundError(
                f"{display(os.fspath(path))}: no such file or folder (to drop its images from"
                " the library, run `vitdex forget PATH`)"
            )
    roots = canonical_roots(paths)
    report = IngestReport(dry_run=dry_run)
    tick = progress or (lambda _event, _n: None)

    def found() -> Iterator[FoundFile]:
        for item in walk_files(roots, frozenset(IMAGE_SUFFIXES)):
            tick("found", 1)
            yield item

    planner = Planner(library.store, found(), sniff_image_format)
    index_features = list(index_features)
    features = None if features is None else list(features)
    if dry_run:
        for feature in [*(features or ()), *index_features]:
            library.check_feature(feature)
        for item in planner.plan():
            report.count(item)
        for removals in _guarded_removals(library, planner, roots, prune, report):
            for removal in removals:
                report.count(removal)
        _finish_report(report, planner)
        return report

    with library.writing(wait=wait):
        new_library = library.store.spec() is None
        if new_library and features is not None:
            _check_index_features(index_features, features)
        for feature in [] if new_library else features or ():
            library.check_feature(feature)
        if model is not None or runtime is not None or new_library:
            # checks the spec first; binds a new library's, with its features
            library.embedder(model, device=device, runtime=runtime, features=features)
        for feature in index_features:
            library.check_feature(feature)
        committer = Committer(library.store, library.require_spec(), report)
        # 1. plan, which is cheap (stat and hash); cheap changes commit as they come
        actions: list[Action] = []
        jobs: list[EmbedJob] = []
        for item in planner.plan():
            if isinstance(item, EmbedJob):
                jobs.append(item)
                continue
            actions.append(item)
            if len(actions) >= MAX_QUEUED_ACTIONS:
                committer.commit(_drain(actions), [])
        committer.commit(_drain(actions), [])
        # 2. embed, with a known total
        if jobs:
            tick("to-embed", len(jobs))
            if executor is None:
                embedder = library.embedder(model, device=device, runtime=runtime)
                executor = LocalExecutor(embedder, batch_size=batch_size, workers=workers)
            for batch in chunks(executor.embed(jobs), commit_every):
                committer.commit([], list(batch))
                tick("embedded", len(batch))
        # 3. remove what is gone, unless it looks like an unmounted drive
        for removals in _guarded_removals(library, planner, roots, prune, report):
            for part in chunks(removals, 500):
                committer.commit(part, [])
        library.store.images.forget_failures(_vanished_failures(library, roots))
        library.store.images.prune()
        _finish_report(report, planner)
        library.indexes.refresh()
        if new_library and "int8" in library.require_spec().data.get("runtime", ""):
            from vitdex.library.int8_check import check_int8

            paths = [image.path for image in library.store.images.under()]
            report.int8_check = check_int8(library, paths).to_dict() if paths else None
    return report


def _check_index_features(index_features: list[str], features: list[str]) -> None:
    """A new library is not created with features that leave out one asked to be indexed."""
    from vitdex.embedder.errors import FeatureError

    for feature in index_features:
        if feature not in features:
            raise FeatureError(
                f"--feature {feature} is not among --features {','.join(features)}: add it, or"
                " index one of those"
            )


def _guarded_removals(
    library: Library, planner: Planner, roots: list[str], prune: bool, report: IngestReport
) -> Iterator[list[Remove]]:
    """Each folder root's removals, unless more than half of its images would go and `prune`
    was not given: then they are held back and listed in `report.held_back`."""
    for root in roots:
        removals = list(planner.removals([root]))
        if not removals:
            continue
        if os.path.isdir(root) and not prune:
            total = library.store.images.count(under=root)
            if 2 * len(removals) > total:
                report.held_back.append({"folder": display(root), "gone": len(removals),
                                         "images": total})  # fmt: skip
                continue
        yield removals


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


def forget(library: Library, paths: Iterable[str | Path], *, wait: bool = False) -> int:
    """Remove the images at or below `paths` (existing or not); how many were removed."""
    from vitdex.storage import canonical

    targets = [canonical(p) for p in paths]
    with library.writing(wait=wait):
        spec = library.require_spec()
        ids: set[int] = set()
        for target in targets:
            ids.update(image.id for image in library.store.images.under(target))
            exact = library.store.images.at_path(target)
            if exact is not None:
                ids.add(exact.id)
        if ids:
            committer = Committer(library.store, spec, IngestReport())
            for part in chunks(sorted(ids), 500):
                committer.commit([Remove(i, "") for i in part], [])
            library.store.images.prune()
        failures = [f.path for t in targets for f in library.store.images.failures(under=t)]
        library.store.images.forget_failures(failures + targets)
        library.indexes.refresh()
    return len(ids)
