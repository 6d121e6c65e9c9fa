"""The exceptions vitdex raises on purpose. It imports nothing from vitdex, so all may use it."""


class VitdexError(Exception):
    """Base of every error vitdex raises on purpose; the CLI prints its message and exits 1."""


class LibraryError(VitdexError):
    """The library folder or database cannot be used as asked."""


class SpecMismatchError(LibraryError):
    """The library was created with another embedding spec; vectors of two specs never mix."""


class LibraryBusyError(LibraryError):
    """Another ingest holds the library's write lock."""


class NotFoundError(VitdexError):
    """A path, image or probe the caller named is not there."""


class ExportError(VitdexError):
    """An export cannot be written as asked (its output exists, pyarrow is missing)."""


class EngineError(VitdexError):
    """An embed engine cannot run as asked (Ray is not installed, the cluster is unreachable)."""


class NoLabelsError(VitdexError):
    """The library's model has no classification head, so its images have no labels."""
