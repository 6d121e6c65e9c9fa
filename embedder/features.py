"""Feature names, and how each one's vector is taken from a single forward pass.

A name is `TOKEN` or `TOKEN-BLOCKS`; TOKEN is `cls` (the CLS token) or `mean` (the mean of the
patch tokens), and every token state passes through the model's final layer norm first:

- `cls`, `mean`: of the last block (what ViTModel's last_hidden_state holds).
- `cls-N`, `mean-N`: of block N, counted from 1 (the first block); `cls-L` of an L-block model
  is `cls`.
- `cls-lastK`, `mean-lastK`: of each of the last K blocks, concatenated, earliest block first
  (dim K x hidden). `cls-last4` is the DINO/DINOv2 linear-evaluation input.
- `pooler`: the trained pooler's output (only checkpoints that carry pooler weights).

Every vector is L2-normalised after concatenation, as stored. Names use only letters, digits and
`-`: they name index files, parquet columns and npy folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vitdex.embedder.errors import FeatureError

BASE_FEATURES: tuple[str, ...] = ("cls", "mean")
_ORDER = ("cls", "mean", "pooler")
_NAME = re.compile(r"^(?P<token>cls|mean)(?:-(?:(?P<block>\d+)|last(?P<last>\d+)))?$")
FEATURE_NAMES = "cls, mean, pooler, cls-last4, cls-N, mean-N, cls-lastK, mean-lastK"
"""What messages list."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One parsed feature name: which token of which blocks (1-based; () = the last block)."""

    name: str
    token: str  # "cls", "mean" or "pooler"
    blocks: tuple[int, ...] = ()

    @property
    def needs_hidden_states(self) -> bool:
        return bool(self.blocks)


def is_feature_name(name: str) -> bool:
    """Whether `name` is spelled like a feature (whatever the model's depth)."""
    return name == "pooler" or _NAME.match(name) is not None


def parse_feature(name: str, layers: int) -> Feature:
    """The feature `name` of a model with `layers` blocks; FeatureError if it has no such one."""
    if name == "pooler":
        return Feature(name, "pooler")
    match = _NAME.match(name)
    if match is None:
        raise FeatureError(f"unknown feature {name!r}; features are {FEATURE_NAMES}")
    token = match["token"]
    if match["block"] is not None:
        block = int(match["block"])
        if not 1 <= block <= layers:
            raise FeatureError(f"feature {name!r}: the model has blocks 1 to {layers}, not {block}")
        return Feature(name, token, () if block == layers else (block,))
    if match["last"] is not None:
        count = int(match["last"])
        if not 1 <= count <= layers:
            raise FeatureError(
                f"feature {name!r}: the model has {layers} blocks, so last1 to last{layers}"
            )
        return Feature(name, token, tuple(range(layers - count + 1, layers + 1)))
    return Feature(name, token)


def canonical_features(names: Iterable[str]) -> tuple[str, ...]:
    """Names without repeats in one order (cls, mean, pooler, then the rest by name), so the
    same set always makes the same spec key."""
    unique = set(names)
    return tuple(n for n in _ORDER if n in unique) + tuple(sorted(unique - set(_ORDER)))


def feature_dim(name: str, hidden: int) -> int:
    """Length of the feature's vector for a model of width `hidden` (any depth)."""
    match = _NAME.match(name)
    if match is not None and match["last"] is not None:
        return hidden * int(match["last"])
    return hidden


def select_features(features: Sequence[Feature], output: Any, layernorm: Any) -> dict[str, Any]:
    """Feature -> (n, dim) unnormalised torch tensors from one ViTModel output.

    `output` was computed with output_hidden_states=True when a feature needs a block's states
    (hidden_states[i] is block i's output, before the final `layernorm`).
    """
    import torch

    last = output.last_hidden_state.float()  # already layer-normed by ViTModel
    normed: dict[int, Any] = {}

    def states(block: int) -> Any:
        if block not in normed:
            normed[block] = layernorm(output.hidden_states[block]).float()
        return normed[block]

    def token(kind: str, hidden: Any) -> Any:
        return hidden[:, 0] if kind == "cls" else hidden[:, 1:].mean(dim=1)

    out: dict[str, Any] = {}
    for feature in features:
        if feature.token == "pooler":
            out[feature.name] = output.pooler_output.float()
        elif not feature.blocks:
            out[feature.name] = token(feature.token, last)
        else:
            parts = [token(feature.token, states(block)) for block in feature.blocks]
            out[feature.name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return out
