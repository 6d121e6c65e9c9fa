"""Errors of the storage layer: each one line that names the database and what is wrong."""

from vitdex.library.errors import LibraryError


class StorageError(LibraryError):
    """The library's database cannot be opened, read or written."""


class ReadOnlyLibraryError(StorageError):
    """A write was asked of a library opened read-only."""
