"""What a library holds: counts, spec, index files and failed files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitdex.library.int8_check import read_int8_check
from vitdex.storage import SCHEMA_VERSION, display

if TYPE_CHECKING:
    from vitdex.library.library import Library


def status(library: Library) -> dict:
    """A JSON-ready summary; loads no model and builds no index (index files: sidecars only)."""
    spec = library.spec
    store = library.store
    with store.snapshot():
        state = store.state()
        contents = store.images.count_contents()
        indexes = {
            feature: library.indexes.describe(feature, state)
            for feature in (spec.features if spec else ())
        }
        failed = [{"path": display(f.path), "error": f.error} for f in library.failures()]
    int8 = read_int8_check(library)
    return {
        "library": str(library.folder),
        "read_only": library.read_only,
        "read_only_reason": library.store.read_only_reason,
        "schema_version": SCHEMA_VERSION,
        "images": state.count,
        "distinct_contents": contents,
        "model": spec.model_id if spec else None,
        "revision": spec.revision if spec else None,
        "spec": spec.to_dict() | {"key": spec.key} if spec else None,
        "features": list(spec.features) if spec else [],
        "generation": state.generation,
        "index": indexes,
        "failed": failed,
        "int8_check": int8.to_dict() if int8 else None,
    }
