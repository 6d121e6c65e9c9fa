"""'Which images look like this one?': query vectors, id filters and results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdex.library.errors import NotFoundError
from vitdex.storage import canonical, display

if TYPE_CHECKING:
    from vitdex.library.library import Library

log = logging.getLogger(__name__)


def query_vector(
    library: Library,
    query: str | Path,
    feature: str,
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
) -> tuple[np.ndarray, int | None]:
    """The query's vector and image id: stored when the file is in the library, else embedded."""
    path = canonical(query)
    spec = library.require_spec()
    stored = library.store.vectors.by_paths(spec, feature, [path]).get(path)
    if stored is not None:
        image_id, vector = stored
        return vector, image_id
    if not Path(path).is_file():
        raise NotFoundError(f"{display(path)}: no such image file")
    embedder = library.embedder(model, device=device, runtime=runtime)
    return embedder.embed_path(path)[feature], None


def search(
    library: Library,
    query: str | Path | None,
    *,
    k: int = 10,
    feature: str = "cls",
    min_score: float | None = None,
    under: str | Path | None = None,
    allowed_ids: np.ndarray | None = None,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    tag: str | None = None,
) -> dict:
    """See `Library.search`."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if query is None:
        if tag is None:
            raise ValueError("give a query image, a tag, or both")
        return search_tag(library, tag, k=k, min_score=min_score, under=under)
    library.check_feature(feature)
    if tag is not None:
        tagged = library.store.labels.tagged_ids(library.require_spec(), tag)
        allowed_ids = tagged if allowed_ids is None else np.intersect1d(allowed_ids, tagged)
    vector, self_id = query_vector(
        library, query, feature, model=model, device=device, runtime=runtime
    )
    if under is not None:
        folder_ids = library.store.images.ids(under=canonical(under))
        allowed_ids = folder_ids if allowed_ids is None else np.intersect1d(allowed_ids, folder_ids)
    fetch = k
    if allowed_ids is not None and self_id is not None:
        allowed_ids = allowed_ids[allowed_ids != self_id]
    elif self_id is not None:
        fetch = k + 1  # the query is its own best match; drop exactly that one
    results: list[dict] = []
    index = library.index(feature)
    if index.ntotal and (allowed_ids is None or len(allowed_ids)):
        scores, ids = index.search(
            vector[None, :], min(fetch, index.ntotal), allowed_ids=allowed_ids
        )
        hits = [
            (int(i), float(s))
            for i, s in zip(ids[0], scores[0], strict=True)
            if i >= 0 and i != self_id and (min_score is None or s >= min_score)
        ][:k]
        images = library.store.images.by_ids([i for i, _ in hits])
        results = [{"id": i, "path": images[i].path, "score": s} for i, s in hits if i in images]
    return {
        "query": canonical(query),
        "feature": feature,
        "in_library": self_id is not None,
        "results": results,
        "tag": tag,
    }


def search_tag(
    library: Library,
    tag: str,
    *,
    k: int = 10,
    min_score: float | None = None,
    under: str | Path | None = None,
) -> dict:
    """The k images whose top label is `tag` (any case), most probable first; score is that
    label's probability. No model is loaded and no index is read."""
    spec = library.require_spec()
    folder = canonical(under) if under is not None else None
    hits = library.store.labels.tagged(spec, tag, under=folder, min_score=min_score, limit=k)
    images = library.store.images.by_ids([hit.image_id for hit in hits])
    results = [
        {"id": hit.image_id, "path": images[hit.image_id].path, "score": hit.score}
        for hit in hits
        if hit.image_id in images
    ]
    return {"query": None, "feature": None, "in_library": False, "results": results, "tag": tag}
