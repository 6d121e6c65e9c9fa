"""Stored vectors of labelled paths, ingesting labelled images the library does not hold yet."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    skipped: list[dict] = field(default_factory=list)
    ingested: int = 0


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


def labelled_vectors(
    library: Library,
    examples: Sequence[Example],
    feature: str,
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    wait: bool = False,
) -> Labelled:
    """The feature's vectors of `examples`; files not in the library are ingested first.

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
    stored = stored_by_path(library, paths, feature)
    missing = [p for p in paths if p not in stored]
    ingested = 0
    if missing:
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
        stored.update(stored_by_path(library, missing, feature))
    reasons = _failure_reasons(library, [p for p in missing if p not in stored])
    kept: list[Example] = []
    for example in usable:
        if example.path in stored:
            kept.append(example)
        else:
            reason = reasons.get(example.path, "not an image file vitdex can read")
            skipped.append({"path": example.path, "label": example.label, "reason": reason})
    dim = library.require_spec().dim_of(feature)
    vectors = (
        np.stack([stored[e.path][1] for e in kept]) if kept else np.empty((0, dim), np.float32)
    )
    return Labelled([e.path for e in kept], [e.label for e in kept], vectors, skipped, ingested)
