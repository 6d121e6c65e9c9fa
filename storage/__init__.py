"""The data-access layer: the Store owns the database and every SQL statement of vitdex.

Other packages call the Store and its repositories (`store.images`, `store.vectors`,
`store.probes`, `store.export_rows`) with typed rows in and out; none of them builds a query.
"""

from vitdex.storage.database import DATABASE_NAME, SCHEMA_VERSION
from vitdex.storage.errors import ReadOnlyLibraryError, StorageError
from vitdex.storage.export_rows import ExportPage
from vitdex.storage.files import (
    FileIdentity,
    NotRegularFileError,
    canonical,
    display,
    open_regular,
    still_same,
)
from vitdex.storage.images import FailedFile, NewContent, StoredImage, chunks
from vitdex.storage.labels import StoredLabel, TagCount
from vitdex.storage.probes import StoredPrediction, StoredProbe
from vitdex.storage.store import LibraryState, Store, StoredSpec
from vitdex.storage.vectors import Changes, from_blob, to_blob

__all__ = [
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "Changes",
    "ExportPage",
    "FailedFile",
    "FileIdentity",
    "LibraryState",
    "NewContent",
    "NotRegularFileError",
    "ReadOnlyLibraryError",
    "StorageError",
    "Store",
    "StoredImage",
    "StoredLabel",
    "StoredPrediction",
    "StoredProbe",
    "StoredSpec",
    "TagCount",
    "canonical",
    "chunks",
    "display",
    "from_blob",
    "open_regular",
    "still_same",
    "to_blob",
]
