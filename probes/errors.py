"""Errors of vitdex.probes; all are VitdexError, so the CLI prints them and exits 1."""

from vitdex.library.errors import VitdexError


class ProbeError(VitdexError):
    """A probe cannot be trained, saved or used as asked."""


class LabelError(ProbeError):
    """The labels given cannot train or score a probe (unreadable file, too few examples)."""


class ProbeSpecError(ProbeError):
    """The probe was trained on vectors of another embedding spec than the library's."""
