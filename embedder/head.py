"""The checkpoint's own classification head: its labels for an image, from the features' forward.

A ViTForImageClassification checkpoint (google/vit-base-patch16-224: ImageNet-1k) carries a
linear `classifier` over the final layer-normed CLS token. vitdex loads the encoder as a ViTModel,
which leaves that layer out, so its two tensors are read from the weight files here and applied
in numpy to the CLS token of the same forward: labels cost no second pass, and the int8 runtime
(whose hidden states come from ONNX Runtime) gets them through the same fp32 head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitdex.embedder.weights import weight_files

log = logging.getLogger(__name__)

TOP_LABELS = 5
"""How many labels ingest stores per image (fewer when the head has fewer)."""
_KEYS = ("classifier.weight", "classifier.bias")


@dataclass(frozen=True, slots=True)
class Label:
    """One of the head's labels for an image, with its softmax probability."""

    label: str
    score: float


@dataclass(frozen=True)
class ClassifierHead:
    """logits = cls @ weight.T + bias, as ViTForImageClassification computes them."""

    weight: np.ndarray  # (labels, hidden) float32
    bias: np.ndarray  # (labels,) float32
    names: tuple[str, ...]  # config.id2label in label-index order

    def probabilities(self, cls_tokens: np.ndarray) -> np.ndarray:
        """Softmax over the labels of each (layer-normed, not normalised) CLS token: (n, labels)."""
        logits = np.asarray(cls_tokens, np.float64) @ self.weight.T.astype(np.float64)
        logits += self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def top(self, cls_tokens: np.ndarray, k: int = TOP_LABELS) -> list[tuple[Label, ...]]:
        """The k most probable labels of each CLS token, best first (all of them if k > labels)."""
        probs = self.probabilities(cls_tokens)
        k = min(k, len(self.names))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            tuple(Label(self.names[j], float(row[j])) for j in picks)
            for row, picks in zip(probs, order, strict=True)
        ]


def load_head(folder: Path, config: Any) -> ClassifierHead | None:
    """The classifier stored beside the encoder in `folder`'s weights, or None without one.

    A head whose shape does not match the config (labels, hidden size) is ignored with a warning:
    wrong names on every photo would be worse than none.
    """
    tensors = _read_tensors(weight_files(folder))
    if tensors is None:
        return None
    weight, bias = tensors
    names = _label_names(config)
    hidden = int(config.hidden_size)
    if weight.shape != (len(names), hidden) or bias.shape != (len(names),):
        log.warning(
            "%s: classifier of shape %s does not match the config's %d labels and hidden size %d;"
            " no labels", folder, weight.shape, len(names), hidden,
        )  # fmt: skip
        return None
    return ClassifierHead(weight.astype(np.float32), bias.astype(np.float32), names)


def _label_names(config: Any) -> tuple[str, ...]:
    id2label = {int(i): str(name) for i, name in (config.id2label or {}).items()}
    return tuple(id2label.get(i, f"LABEL_{i}") for i in range(len(id2label)))


def _read_tensors(files: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
    """classifier.weight and .bias from safetensors (only those two read) or torch .bin files."""
    found: dict[str, np.ndarray] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:  # "pt": bf16 checkpoints too
                for key in set(_KEYS) & set(handle.keys()):
                    found[key] = handle.get_tensor(key).float().numpy()
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            for key in set(_KEYS) & set(state):
                found[key] = state[key].float().numpy()
    if not all(key in found for key in _KEYS):
        return None
    return found[_KEYS[0]], found[_KEYS[1]]
