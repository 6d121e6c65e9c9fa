"""Training a probe on a library: gather labelled vectors, tune, score honestly, save.

Scores never come from data that chose or fitted the model they score:
- validation: a stratified split is held out first; the L2 strength is tuned on an inner split of
  the rest, and the chosen strength's sweep model is scored on the held-out split;
- --test: an independent labelled set, scored by the final probe;
- --cv K: stratified K folds, each tuning on its own inner split of its training part.
The saved probe is then tuned and refitted on all the training labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vitdex.probes.errors import LabelError
from vitdex.probes.labels import Example
from vitdex.probes.metrics import classification_report
from vitdex.probes.split import check_splittable, stratified_folds, stratified_split
from vitdex.probes.store import check_name_free, save_probe
from vitdex.probes.vectors import labelled_vectors

if TYPE_CHECKING:
    from vitdex.library.library import Library
    from vitdex.probes.linear import LinearModel
    from vitdex.probes.logreg import Tuned

log = logging.getLogger(__name__)

EVALUATION_FRACTION = 0.2
SEED = 0


def train_probe(
    library: Library,
    name: str,
    examples: Sequence[Example],
    *,
    feature: str = "cls",
    test_examples: Sequence[Example] | None = None,
    cv: int | None = None,
    balanced: bool = False,
    replace: bool = False,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    wait: bool = False,
) -> dict:
    """Train, score and save probe `name`; returns its name, classes, metrics and skipped rows.

    A writer (it may ingest labelled images the library lacks, and it saves the probe): it holds
    the library's write lock throughout; `wait` waits for another writer instead of failing.
    """
    with library.writing(wait=wait):
        return _train_probe(
            library, name, examples, feature=feature, test_examples=test_examples, cv=cv,
            balanced=balanced, replace=replace, model=model, device=device, runtime=runtime,
            wait=wait,
        )  # fmt: skip


def _train_probe(
    library: Library,
    name: str,
    examples: Sequence[Example],
    *,
    feature: str,
    test_examples: Sequence[Example] | None,
    cv: int | None,
    balanced: bool,
    replace: bool,
    model: str | None,
    device: str,
    runtime: str | None,
    wait: bool,
) -> dict:
    check_name_free(library, name, replace=replace)
    library.check_feature(feature)
    if cv is not None and cv < 2:
        raise LabelError("--cv needs at least 2 folds")
    data = labelled_vectors(
        library, examples, feature, model=model, device=device, runtime=runtime, wait=wait
    )
    for row in data.skipped:
        log.warning("skipped %s (%s): %s", row["path"], row["label"], row["reason"])
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise LabelError(f"a probe needs at least 2 labels with readable images, got {classes}")
    index_of = {label: i for i, label in enumerate(classes)}
    x, y = data.vectors, np.array([index_of[label] for label in data.labels], np.int64)
    check_splittable(y, classes, 3, "training (one example held out for scoring, two to tune on)")
    n_classes = len(classes)
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    final, validation = fit_and_score(x, y, classes, balanced=balanced, rng=rng)
    train_seconds = time.perf_counter() - started

    metrics: dict = {
        "val_accuracy": validation["accuracy"],
        "balanced_accuracy": validation["balanced_accuracy"],
    }
    if "top5_accuracy" in validation:
        metrics["top5_accuracy"] = validation["top5_accuracy"]
    metrics.update(
        {
            "validation": validation,
            "regularization": {
                "C": final.c,
                "l2": final.l2,
                "selected_by": final.selected_by,
                "sweep": final.sweep,
                "refit": final.refit,
            },
            "train_seconds": train_seconds,
            "examples": len(y),
            "class_counts": {
                label: int(count)
                for label, count in zip(classes, np.bincount(y, minlength=n_classes), strict=True)
            },
            "balanced": balanced,
            "feature": feature,
        }
    )
    skipped = list(data.skipped)
    if cv is not None:
        metrics["cv"] = cross_validate(x, y, classes, cv, balanced=balanced, rng=rng)
    if test_examples is not None:
        test_report, test_skipped = score_test_set(
            library,
            final.model,
            classes,
            test_examples,
            feature,
            set(data.paths),
            model=model,
            device=device,
            runtime=runtime,
            wait=wait,
        )
        metrics["test"] = test_report
        skipped += [{**row, "set": "test"} for row in test_skipped]
    save_probe(
        library,
        name,
        feature=feature,
        classes=classes,
        model=final.model,
        metrics=metrics,
        replace=replace,
        wait=wait,
    )
    return {
        "name": name,
        "classes": classes,
        "feature": feature,
        "metrics": metrics,
        "skipped": skipped,
        "ingested": data.ingested,
    }


def fit_and_score(
    x: np.ndarray, y: np.ndarray, classes: list[str], *, balanced: bool, rng: np.random.Generator
) -> tuple[Tuned, dict]:
    """The probe's model on all of (x, y) and an honest validation report.

    A stratified evaluation split is held out first. C is swept on an inner split of the rest; the
    chosen C's sweep model, which never saw the evaluation split, is scored on it. The final model
    is that C refitted on everything, warm-started from the sweep model.
    """
    from vitdex.probes.logreg import refit, sweep

    rest, held_out = stratified_split(y, EVALUATION_FRACTION, rng)
    swept = sweep(x[rest], y[rest], len(classes), balanced=balanced, rng=rng)
    validation = classification_report(y[held_out], swept.model.proba(x[held_out]), classes)
    return refit(x, y, len(classes), swept, balanced=balanced), validation


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    k: int,
    *,
    balanced: bool,
    rng: np.random.Generator,
) -> dict:
    """Pooled out-of-fold metrics of K stratified folds, plus each fold's accuracy."""
    from vitdex.probes.logreg import tune

    folds = stratified_folds(y, k, rng)
    proba = np.zeros((len(y), len(classes)), np.float32)
    fold_accuracy = []
    for number, fold in enumerate(folds, start=1):
        train = np.setdiff1d(np.arange(len(y)), fold)
        check_splittable(y[train], classes, 2, f"--cv {k} (fold {number}'s training part)")
        tuned = tune(x[train], y[train], len(classes), balanced=balanced, rng=rng)
        proba[fold] = tuned.model.proba(x[fold])
        fold_accuracy.append(float(np.mean(proba[fold].argmax(axis=1) == y[fold])))
    report = classification_report(y, proba, classes)
    report.update(
        {"folds": k, "fold_accuracy": fold_accuracy, "accuracy_std": float(np.std(fold_accuracy))}
    )
    return report


def score_test_set(
    library: Library,
    probe_model: LinearModel,
    classes: list[str],
    examples: Sequence[Example],
    feature: str,
    training_paths: set[str],
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    wait: bool = False,
) -> tuple[dict, list[dict]]:
    """The final probe's report on an independent labelled set; rows it cannot score are skipped."""
    data = labelled_vectors(
        library, examples, feature, model=model, device=device, runtime=runtime, wait=wait
    )
    skipped = list(data.skipped)
    keep = []
    for i, (path, label) in enumerate(zip(data.paths, data.labels, strict=True)):
        if label not in classes:
            skipped.append({"path": path, "label": label, "reason": "label not among the probe's"})
        elif path in training_paths:
            skipped.append({"path": path, "label": label, "reason": "also in the training labels"})
        else:
            keep.append(i)
    for row in skipped:
        log.warning("test set: skipped %s (%s): %s", row["path"], row["label"], row["reason"])
    if not keep:
        raise LabelError("no usable rows in the test set")
    index_of = {label: i for i, label in enumerate(classes)}
    y = np.array([index_of[data.labels[i]] for i in keep], np.int64)
    return classification_report(y, probe_model.proba(data.vectors[keep]), classes), skipped
