"""Where the library lives: option, then environment, then the platform's user data dir."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_ENV = "VITDEX_LIBRARY"
DATABASE_ENV = "VITDEX_DATABASE_URL"
MODEL_ENV = "VITDEX_MODEL"
DEFAULT_MODEL = "google/vit-base-patch16-224"


def default_library_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path("vitdex", appauthor=False) / "library"


def resolve_library_path(option: str | os.PathLike | None = None) -> Path:
    """The library folder: `option` if given, else $VITDEX_LIBRARY, else the platform default."""
    if option:
        return Path(option).expanduser().resolve()
    if env := os.environ.get(LIBRARY_ENV):
        return Path(env).expanduser().resolve()
    return default_library_path()


def resolve_database(option: str | None = None) -> str | None:
    """The database URL: `option` if given, else $VITDEX_DATABASE_URL, else None (the SQLite
    file in the library folder)."""
    return option or os.environ.get(DATABASE_ENV) or None


def resolve_model(option: str | None, library_model: str | None = None) -> str:
    """The model: `option`, else $VITDEX_MODEL, else the library's own, else the default."""
    return option or os.environ.get(MODEL_ENV) or library_model or DEFAULT_MODEL
