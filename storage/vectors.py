"""Vectors as SQLite blobs: raw little-endian float32, no pickle."""

from __future__ import annotations

import numpy as np


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int | None = None) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if dim is not None and vector.shape[0] != dim:
        raise ValueError(f"stored vector has {vector.shape[0]} values, expected {dim}")
    return vector


def stack_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """Many blobs into one (n, dim) float32 array without a Python loop over values."""
    if not blobs:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)
