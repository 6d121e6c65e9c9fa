"""The linear model a probe is, in numpy only: predicting never needs torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearModel:
    """Class scores W x + b on raw (uncentred) vectors; float32 (classes, dim) and (classes,)."""

    weights: np.ndarray
    bias: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.weights.T + self.bias

    def proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
