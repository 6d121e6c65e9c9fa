"""EmbeddingSpec: everything that decides what a vector means, so libraries never mix vectors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_KEYED = ("weights", "architecture", "preprocessing", "features", "dim", "runtime")
"""The fields that determine the vectors; model_id and revision only say where to load from."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """What makes a vector set: weights, architecture, preprocessing, features, dim, runtime.

    `model_id` (hub id or folder) and `revision` (hub commit, or "local") say where the model
    was loaded from; they are not part of `key`, so a moved folder or a model-card edit upstream
    leaves a library's key unchanged.
    """

    model_id: str
    revision: str
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ("cls", "mean")
    dim: int = 0
    runtime: str = "torch-fp32"
    weights: str = ""
    """sha256 hex of the weights (of the ordered shard digests when sharded); "" in old specs."""
    architecture: Mapping[str, Any] = field(default_factory=dict)
    """The model config entries that change the forward pass (layer_norm_eps, hidden_act...)."""

    def __post_init__(self) -> None:
        # Normalise through JSON so a spec read back from storage compares equal to a fresh one.
        object.__setattr__(self, "preprocessing", json.loads(json.dumps(dict(self.preprocessing))))
        object.__setattr__(self, "architecture", json.loads(json.dumps(dict(self.architecture))))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "dim", int(self.dim))

    def dim_of(self, feature: str) -> int:
        """Length of the feature's vectors: `dim`, or a multiple of it (cls-last4: 4 x dim)."""
        from vitdex.embedder.features import feature_dim

        return feature_dim(feature, self.dim)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {name: self.dim_of(name) for name in self.features}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (features as a list).

        `feature_dims` is written only when a feature's length is not `dim` (so older specs'
        dicts are unchanged); storage reads it, as it cannot parse feature names.
        """
        data = {
            "model_id": self.model_id,
            "revision": self.revision,
            "weights": self.weights,
            "architecture": json.loads(json.dumps(dict(self.architecture))),
            "preprocessing": json.loads(json.dumps(dict(self.preprocessing))),
            "features": list(self.features),
            "dim": self.dim,
            "runtime": self.runtime,
        }
        if any(d != self.dim for d in self.feature_dims.values()):
            data["feature_dims"] = self.feature_dims
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingSpec:
        """Inverse of to_dict; unknown keys are ignored so older readers survive newer writers.

        Specs written before `weights` existed read back with weights "" (see `key`);
        `feature_dims` is derived from features and dim, so it is not read back.
        """
        return cls(
            model_id=str(data["model_id"]),
            revision=str(data["revision"]),
            preprocessing=dict(data.get("preprocessing") or {}),
            features=tuple(data.get("features") or ()),
            dim=int(data.get("dim") or 0),
            runtime=str(data.get("runtime") or "torch-fp32"),
            weights=str(data.get("weights") or ""),
            architecture=dict(data.get("architecture") or {}),
        )

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the fields that determine the vectors.

        A spec without weights (written before they were recorded) keeps the key it was stored
        with: the hash of its old six fields, model_id and revision included.
        """
        data = self.to_dict()
        if self.weights:
            data = {name: data[name] for name in _KEYED}
        else:
            data = {k: v for k, v in data.items() if k not in ("weights", "architecture")}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)
