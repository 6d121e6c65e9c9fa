"""Labelling images with a saved probe: named files, or every image in the library (stored)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdex.probes.labels import absolute_path
from vitdex.probes.store import SavedProbe, get_probe, store_predictions
from vitdex.probes.vectors import stored_by_path

if TYPE_CHECKING:
    from vitdex.library.library import Library

CHUNK = 8_192


def _rows(probe: SavedProbe, paths: Sequence[str], proba: np.ndarray, top: int) -> list[dict]:
    top = min(top, len(probe.classes))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top]
    return [
        {
            "path": path,
            "label": probe.classes[ranked[0]],
            "score": float(p[ranked[0]]),
            "top": [{"label": probe.classes[c], "score": float(p[c])} for c in ranked],
        }
        for path, p, ranked in zip(paths, proba, order, strict=True)
    ]


def predict_paths(
    library: Library,
    name: str,
    images: Sequence[str | Path],
    *,
    top: int = 3,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
) -> dict:
    """Labels of `images`: stored vectors for library images, the others embedded on the fly.

    A bad input never stops the run: a file that is missing or cannot be read as an image is
    listed under "errors" with its reason, and the others are still labelled.
    """
    probe = get_probe(library, name)
    paths = [absolute_path(image) for image in images]
    vectors = {
        path: vector for path, (_, vector) in stored_by_path(library, paths, probe.feature).items()
    }
    reasons: dict[str, str] = {}
    to_embed = []
    for path in dict.fromkeys(paths):
        if path in vectors:
            continue
        if os.path.lexists(path):
            to_embed.append(path)
        else:
            reasons[path] = "no such file"
    if to_embed:
        embedder = library.embedder(model, device=device, runtime=runtime)
        for result in embedder.embed_files(to_embed, Path):
            if result.ok:
                vectors[result.item] = result.vectors[probe.feature]
            else:
                reasons[result.item] = result.error or "cannot read"
    done = [path for path in paths if path in vectors]
    proba = (
        probe.model.proba(np.stack([vectors[path] for path in done]))
        if done
        else np.empty((0, len(probe.classes)), np.float32)
    )
    return {
        "probe": probe.name,
        "predictions": _rows(probe, done, proba, top),
        "errors": [{"path": path, "reason": reasons[path]} for path in paths if path in reasons],
    }


def predict_all(
    library: Library,
    name: str,
    *,
    top: int = 3,
    progress: Callable[[int], None] | None = None,
    wait: bool = False,
) -> dict:
    """Label every image in the library and store the labels, replacing the probe's old ones.

    A write: it holds the library's write lock throughout (`wait`: wait for another writer
    instead of failing), so the images it labels are the ones it stores labels for.
    """
    with library.writing(wait=wait):
        probe = get_probe(library, name)
        ids, vectors = library.store.vectors.of_images(library.require_spec(), probe.feature)
        labels: list[str] = []
        scores = np.empty(len(ids), np.float32)
        rows: list[dict] = []
        for start in range(0, len(ids), CHUNK):
            chunk_ids = ids[start : start + CHUNK]
            proba = probe.model.proba(vectors[start : start + CHUNK])
            images = library.store.images.by_ids(chunk_ids.tolist())
            chunk_rows = _rows(probe, [images[int(i)].path for i in chunk_ids], proba, top)
            labels += [row["label"] for row in chunk_rows]
            scores[start : start + len(chunk_ids)] = [row["score"] for row in chunk_rows]
            rows += chunk_rows
            if progress:
                progress(len(chunk_ids))
        stored = store_predictions(library, probe, ids, labels, scores)
    tally = Counter(labels)
    counts = {label: tally[label] for label in probe.classes}
    return {"probe": probe.name, "stored": stored, "counts": counts, "predictions": rows}
