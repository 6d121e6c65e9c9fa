"""'Which images look like this one?': query vectors, id filters and results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from vitdex.library.errors import NotFoundError
from vitdex.library.ingest import under_clause
from vitdex.storage import Image, Vector, from_blob

if TYPE_CHECKING:
    from vitdex.library.library import Library

log = logging.getLogger(__name__)


def check_feature(library: Library, feature: str) -> None:
    """Refuse a feature the library does not store, saying why."""
    from vitdex.embedder.errors import FeatureError

    spec = library.spec
    if spec is None or feature in spec.features:
        return
    if feature == "pooler":
        raise FeatureError(
            f"feature 'pooler' is not available: {spec.model_id} has no trained pooler weights"
            " (it is a classification checkpoint, so its pooler would be random); use cls or mean"
        )
    raise FeatureError(
        f"unknown feature {feature!r}; this library stores {', '.join(spec.features)}"
    )


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
    path = Path(query).expanduser().absolute()
    spec = library.require_spec()
    with library.sessions() as session:
        row = session.execute(
            select(Image.id, Vector.data)
            .join(Vector, Vector.content_id == Image.content_id)
            .where(Image.path == str(path), Vector.feature == feature, Vector.spec_id == spec.id)
        ).first()
    if row is not None:
        return from_blob(row.data, spec.dim), row.id
    if not path.is_file():
        raise NotFoundError(f"{path}: no such image file")
    embedder = library.embedder(model, device=device, runtime=runtime)
    return embedder.embed_path(path)[feature], None


def ids_under(library: Library, folder: str | Path) -> np.ndarray:
    folder = Path(folder).expanduser().absolute()
    with library.sessions() as session:
        return np.fromiter(
            session.scalars(select(Image.id).where(under_clause(Image.path, folder))), np.int64
        )


def paths_of(library: Library, ids: list[int]) -> dict[int, str]:
    with library.sessions() as session:
        return dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())


def search(
    library: Library,
    query: str | Path,
    *,
    k: int = 10,
    feature: str = "cls",
    min_score: float | None = None,
    under: str | Path | None = None,
    allowed_ids: np.ndarray | None = None,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
) -> dict:
    """The k images most similar to `query` by cosine, best first; the query itself left out.

    `under` and `allowed_ids` restrict the candidates inside FAISS (an id selector), so k results
    come back whenever k candidates exist.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    check_feature(library, feature)
    vector, self_id = query_vector(
        library, query, feature, model=model, device=device, runtime=runtime
    )
    if under is not None:
        folder_ids = ids_under(library, under)
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
        paths = paths_of(library, [i for i, _ in hits])
        results = [{"id": i, "path": paths[i], "score": s} for i, s in hits if i in paths]
    return {
        "query": str(Path(query).expanduser().absolute()),
        "feature": feature,
        "in_library": self_id is not None,
        "results": results,
    }
