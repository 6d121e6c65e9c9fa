"""EmbeddingSpec: everything that decides what a vector means, so libraries never mix vectors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EmbeddingSpec:
    """Model, weights revision, preprocessing, features, dimension and runtime of a vector set."""

    model_id: str
    revision: str
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ("cls", "mean")
    dim: int = 0
    runtime: str = "torch-fp32"

    def __post_init__(self) -> None:
        # Normalise through JSON so a spec read back from storage compares equal to a fresh one.
        object.__setattr__(self, "preprocessing", json.loads(json.dumps(dict(self.preprocessing))))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "dim", int(self.dim))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (features as a list)."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "preprocessing": json.loads(json.dumps(dict(self.preprocessing))),
            "features": list(self.features),
            "dim": self.dim,
            "runtime": self.runtime,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingSpec:
        """Inverse of to_dict; unknown keys are ignored so older readers survive newer writers."""
        return cls(
            model_id=str(data["model_id"]),
            revision=str(data["revision"]),
            preprocessing=dict(data.get("preprocessing") or {}),
            features=tuple(data.get("features") or ()),
            dim=int(data.get("dim") or 0),
            runtime=str(data.get("runtime") or "torch-fp32"),
        )

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of every field (canonical JSON, sorted keys)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)
