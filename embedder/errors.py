"""Errors the embedder raises on purpose; all are VitdexError so the CLI reports them cleanly."""

from __future__ import annotations

from pathlib import Path

from vitdex.library.errors import VitdexError


class DecodeError(VitdexError):
    """A file could not be read as an image; str is "<path>: <one-line reason>"."""

    def __init__(self, path: str | Path, reason: str) -> None:
        lines = str(reason).strip().splitlines()
        self.path = Path(path)
        self.reason = lines[0].strip() if lines else "unknown error"
        super().__init__(f"{self.path}: {self.reason}")


class ModelLoadError(VitdexError):
    """The checkpoint or its image processor could not be loaded."""


class FeatureError(VitdexError):
    """A feature was asked for that this checkpoint cannot produce meaningfully."""


class DeviceError(ModelLoadError):
    """The asked-for device (cuda, mps) is not usable on this machine."""
