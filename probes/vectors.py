"""Stored vectors of labelled paths, ingesting labelled images the library does not hold yet."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdex.probes.labels import Example

if TYPE_CHECKING:
    from vitdex.library.library import Library

log = logging.getLogger(__name__)


@dataclass
class Labelled:
    """Vectors of the usable examples, in input order, and why the others were skipped."""

    paths: list[str]
    labels: list[str]
    vectors: np.ndarray
    sha256s: list[str]  # each example's file content, so copies are known as copies
    skipped: list[dict] = field(default_factory=list)
    ingested: int = 0  # images this call added to the library
    embedded: int = 0  # images embedded on the fly and not stored (ingest=False)


def stored_by_path(
    library: Library, paths: Sequence[str], feature: str
) -> dict[str, tuple[int, np.ndarray]]:
    """path -> (image id, vector) for the (canonical) paths the library holds."""
    spec = library.store.spec()
    if spec is None:
        return {}
    return library.store.vectors.by_paths(spec, feature, paths)


def _failure_reasons(library: Library, paths: Sequence[str]) -> dict[str, str]:
    return {f.path: f.error for f in library.store.images.failures(paths=paths)} if paths else {}


@dataclass
class _OnTheFly:
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    sha256s: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def _embed_on_the_fly(
    library: Library,
    paths: Sequence[str],
    feature: str,
    *,
    model: str | None,
    device: str,
    runtime: str | None,
) -> _OnTheFly:
    """Embed files without storing them; bad files get a reason instead of a vector."""
    from vitdex.library.plan import file_sha256

    embedder = library.embedder(model, device=device, runtime=runtime)
    library.check_feature(feature)  # a library just bound to the embedder's spec
    found = _OnTheFly()
    for result in embedder.embed_files(paths, Path):
        if not result.ok:
            found.reasons[result.item] = result.error or "cannot read"
            continue
        try:
            found.sha256s[result.item] = file_sha256(result.item)
        except OSError as exc:
            found.reasons[result.item] = f"cannot read file: {exc.strerror or exc}"
            continue
        found.vectors[result.item] = result.vectors[feature]
    return found


def labelled_vectors(
    library: Library,
    examples: Sequence[Example],
    feature: str,
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    wait: bool = False,
    ingest: bool = True,
) -> Labelled:
    """The feature's vectors of `examples`; files not in the library are ingested first, or,
    without `ingest`, embedded on the fly and never stored.

    Missing files, files that cannot be read as images and repeated paths are skipped, each with
    its reason. The ingest holds the write lock (`wait`: wait for another writer, else fail).
    """
    skipped: list[dict] = []
    seen: dict[str, str] = {}
    usable: list[Example] = []
    for example in examples:
        if example.path in seen:
            skipped.append(
                {
                    "path": example.path,
                    "label": example.label,
                    "reason": f"listed again (first as {seen[example.path]!r})",
                }
            )
        elif not os.path.isfile(example.path):
            skipped.append({"path": example.path, "label": example.label, "reason": "no such file"})
        else:
            seen[example.path] = example.label
            usable.append(example)
    paths = [e.path for e in usable]
    vectors = {
        path: vector for path, (_, vector) in stored_by_path(library, paths, feature).items()
    }
    missing = [p for p in paths if p not in vectors]
    fresh = _OnTheFly()
    ingested = 0
    if missing and ingest:
        log.info("ingesting %d labelled images not in the library yet", len(missing))
        report = library.ingest(
            missing,
            model=model,
            device=device,
            runtime=runtime,
            wait=wait,
            index_features=(feature,),
        )
        ingested = report.added + report.updated + report.moved
        added = stored_by_path(library, missing, feature)
        vectors.update((path, vector) for path, (_, vector) in added.items())
        fresh.reasons = _failure_reasons(library, [p for p in missing if p not in vectors])
    elif missing:
        log.info("embedding %d labelled images not in the library (not adding them)", len(missing))
        fresh = _embed_on_the_fly(
            library, missing, feature, model=model, device=device, runtime=runtime
        )
        vectors.update(fresh.vectors)
    kept: list[Example] = []
    for example in usable:
        if example.path in vectors:
            kept.append(example)
        else:
            reason = fresh.reasons.get(example.path, "not an image file vitdex can read")
            skipped.append({"path": example.path, "label": example.label, "reason": reason})
    stored_images = library.store.images.by_paths(
        [e.path for e in kept if e.path not in fresh.vectors]
    )
    sha256s = [
        fresh.sha256s[e.path] if e.path in fresh.vectors else stored_images[e.path].sha256
        for e in kept
    ]
    dim = library.require_spec().dim_of(feature)
    stacked = np.stack([vectors[e.path] for e in kept]) if kept else np.empty((0, dim), np.float32)
    return Labelled(
        [e.path for e in kept],
        [e.label for e in kept],
        stacked,
        sha256s,
        skipped,
        ingested=ingested,
        embedded=len(fresh.vectors),
    )
