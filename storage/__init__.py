"""SQLAlchemy 2 models and sessions of a library; SQLite is the source of truth, vectors too."""

from vitdex.storage.database import DATABASE_NAME, SCHEMA_VERSION, open_engine, session_factory
from vitdex.storage.models import (
    Base,
    Content,
    Failure,
    Image,
    Meta,
    Prediction,
    Probe,
    Spec,
    Vector,
)
from vitdex.storage.vectors import from_blob, stack_blobs, to_blob

__all__ = [
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "Base",
    "Content",
    "Failure",
    "Image",
    "Meta",
    "Prediction",
    "Probe",
    "Spec",
    "Vector",
    "from_blob",
    "open_engine",
    "session_factory",
    "stack_blobs",
    "to_blob",
]
