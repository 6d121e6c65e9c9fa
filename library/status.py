"""What a library holds: counts, spec, index files and failed files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from vitdex.index.errors import IndexFileError
from vitdex.index.sync import index_files, preferred_kind
from vitdex.index.vector_index import read_header
from vitdex.storage import SCHEMA_VERSION, Content, Image

if TYPE_CHECKING:
    from vitdex.library.library import Library


def status(library: Library) -> dict:
    """A JSON-ready summary; loads no model and builds no index."""
    spec = library.spec
    with library.sessions() as session:
        images = session.scalar(select(func.count()).select_from(Image))
        contents = session.scalar(select(func.count()).select_from(Content))
    generation = library.generation()
    indexes = {}
    for feature in spec.features if spec else ():
        files = index_files(library, feature)
        entry: dict = {"preferred": preferred_kind(library, feature), "file": None}
        if files:
            file_generation, path = files[0]
            try:
                header = read_header(path)
            except IndexFileError as exc:
                entry.update(file=str(path), error=f"{exc} (rebuilt from SQLite on next use)")
            else:
                entry.update(
                    file=str(path),
                    kind=header["kind"],
                    vectors=header["ntotal"],
                    bytes=path.stat().st_size,
                    params=header["params"],
                    up_to_date=file_generation == generation and header["ntotal"] == images,
                )
        indexes[feature] = entry
    return {
        "library": str(library.folder),
        "schema_version": SCHEMA_VERSION,
        "images": images,
        "distinct_contents": contents,
        "model": spec.model_id if spec else None,
        "revision": spec.revision if spec else None,
        "spec": spec.to_dict() | {"key": spec.key} if spec else None,
        "features": list(spec.features) if spec else [],
        "generation": generation,
        "index": indexes,
        "failed": library.failures(),
    }
