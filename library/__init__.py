"""The vitdex library API: `Library.open(folder)`, then `.ingest()`, `.search()`, `.status()`.

Names load lazily (PEP 562), so importing this package stays cheap and any vitdex package can
import `vitdex.library.errors` without cycles.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "Library": "vitdex.library.library",
    "IngestReport": "vitdex.library.ingest",
    "VitdexError": "vitdex.library.errors",
    "is_feature_name": "vitdex.embedder.features",  # the CLI's spelling check of --feature
    "FEATURE_NAMES": "vitdex.embedder.features",
    # what the CLI and the gallery show of the store's rows, so they need not import storage/
    "display": "vitdex.storage",
    "StoredImage": "vitdex.storage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vitdex.library' has no attribute {name!r}")
