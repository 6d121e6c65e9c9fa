"""Classification metrics from class probabilities, in numpy, keyed by label for JSON."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in y_true (scikit-learn's definition)."""
    confusion = confusion_matrix(y_true, y_pred, n_classes)
    support = confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(confusion)[present] / support[present])) if present.any() else 0.0


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    picked = proba[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, 1e-15, 1.0)))) if len(y_true) else 0.0


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    top = np.argpartition(-proba, k - 1, axis=1)[:, :k]
    return float(np.mean((top == y_true[:, None]).any(axis=1)))


def classification_report(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, top-5 (> 5 classes), log loss, per-class P/R/F1, confusion."""
    n_classes = len(classes)
    y_pred = proba.argmax(axis=1)
    confusion = confusion_matrix(y_true, y_pred, n_classes)
    true_positives = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros(n_classes), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(n_classes), where=total > 0)
    report = {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, n_classes),
    }
    if n_classes > 5:
        report["top5_accuracy"] = top_k_accuracy(y_true, proba, 5)
    report["log_loss"] = log_loss(y_true, proba)
    report["per_class"] = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }
    report["confusion"] = confusion.tolist()
    return report
