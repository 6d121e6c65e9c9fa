"""Errors of vitdex.index: every one is a VitdexError so the CLI reports it cleanly."""

from __future__ import annotations

from vitdex.library.errors import VitdexError


class VectorIndexError(VitdexError):
    """Base of the errors raised by vitdex.index."""


class IndexFileError(VectorIndexError):
    """An index file or its sidecar is missing, truncated, corrupt, of an unknown format, not
    the pair's other half, or cannot be written."""


class IndexKindError(VectorIndexError):
    """An unknown index kind, or an operation the kind cannot do (e.g. remove from HNSW)."""


class IndexInputError(VectorIndexError, ValueError):
    """Ids or vectors given to the index have the wrong shape, dtype, dimension or duplicates."""
