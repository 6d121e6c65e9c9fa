"""Training a probe on a library: gather labelled vectors, tune, score honestly, save.

Scores never come from data that chose or fitted the model they score, and no picture sits on
both sides of a split: examples are grouped by content (identical files, and near duplicates at
the library's calibrated threshold, see `vitdex.probes.groups`) and every split keeps a group
whole.
- validation ("holdout-refit"): a stratified split is held out first; C is chosen on an inner
  split of the rest, then refitted at that C on all the rest, as the saved probe is refitted on
  all the labels, and that refit is scored on the held-out split;
- --test: an independent labelled set, scored by the saved probe; its copies and near duplicates
  of training images are skipped;
- --cv K: stratified K folds, each running the whole procedure (tune on an inner split, refit)
  on its training part.
The saved probe is then that C refitted on all the training labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vitdex.probes.errors import LabelError
from vitdex.probes.groups import ContentGroups, content_groups
from vitdex.probes.labels import Example
from vitdex.probes.metrics import classification_report
from vitdex.probes.split import check_splittable, stratified_folds, stratified_split
from vitdex.probes.store import check_name_free, save_probe
from vitdex.probes.vectors import Labelled, labelled_vectors

if TYPE_CHECKING:
    from vitdex.library.library import Library
    from vitdex.probes.linear import LinearModel
    from vitdex.probes.logreg import Tuned

log = logging.getLogger(__name__)

EVALUATION_FRACTION = 0.2
SEED = 0
HOLDOUT_METHOD = "holdout-refit"
HOLDOUT_DESCRIPTION = (
    "a stratified {percent}% of the labels (copies and near duplicates kept together) held out;"
    " C chosen on an inner split of the rest, refitted at that C on all the rest (as the saved"
    " probe is on all the labels) and scored on the held-out part"
)
CV_METHOD = "cross-validation"


@dataclass
class Fitted:
    """The probe's final model, its held-out report and the held-out example indices."""

    final: Tuned
    validation: dict
    held_out: np.ndarray


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
    ingest: bool = True,
) -> dict:
    """Train, score and save probe `name`; returns its name, classes, metrics and skipped rows.

    A writer (it may ingest labelled images the library lacks, and it saves the probe): it holds
    the library's write lock throughout; `wait` waits for another writer instead of failing.
    Labelled images the library lacks are ingested for good (they then show up in search, dupes
    and the gallery); with `ingest=False` they are embedded on the fly and not stored.
    """
    with library.writing(wait=wait):
        return _train_probe(
            library, name, examples, feature=feature, test_examples=test_examples, cv=cv,
            balanced=balanced, replace=replace, model=model, device=device, runtime=runtime,
            wait=wait, ingest=ingest,
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
    ingest: bool,
) -> dict:
    check_name_free(library, name, replace=replace)
    library.check_feature(feature)
    if cv is not None and cv < 2:
        raise LabelError("--cv needs at least 2 folds")
    data = labelled_vectors(
        library, examples, feature, model=model, device=device, runtime=runtime, wait=wait,
        ingest=ingest,
    )  # fmt: skip
    for row in data.skipped:
        log.warning("skipped %s (%s): %s", row["path"], row["label"], row["reason"])
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise LabelError(f"a probe needs at least 2 labels with readable images, got {classes}")
    index_of = {label: i for i, label in enumerate(classes)}
    x, y = data.vectors, np.array([index_of[label] for label in data.labels], np.int64)
    groups = _groups(library, feature, data)
    check_splittable(
        y, classes, 3, "training (one held out for scoring, two to tune on)", groups.group
    )
    n_classes = len(classes)
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    fitted = fit_and_score(x, y, classes, balanced=balanced, rng=rng, groups=groups.group)
    final, validation = fitted.final, fitted.validation
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
            "grouping": groups.summary(),
        }
    )
    skipped = list(data.skipped)
    ingested, embedded = data.ingested, data.embedded
    if cv is not None:
        metrics["cv"] = cross_validate(
            x, y, classes, cv, balanced=balanced, rng=rng, groups=groups.group
        )
    if test_examples is not None:
        test = score_test_set(
            library, final.model, classes, test_examples, feature, data, model=model,
            device=device, runtime=runtime, wait=wait, ingest=ingest,
        )  # fmt: skip
        metrics["test"] = test.report
        skipped += [{**row, "set": "test"} for row in test.skipped]
        ingested, embedded = ingested + test.ingested, embedded + test.embedded
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
        "ingested": ingested,
        "embedded_only": embedded,
    }


def _groups(library: Library, feature: str, data: Labelled) -> ContentGroups:
    """The labelled examples' content groups at the library's calibrated threshold (vectors
    embedded on the fly join the calibration sample, as the library may hold few others)."""
    from vitdex.library.dupes import calibrated_threshold

    extra = data.vectors if data.embedded else None
    return content_groups(data.sha256s, data.vectors, calibrated_threshold(library, feature, extra))


def fit_and_score(
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    *,
    balanced: bool,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> Fitted:
    """The probe's model on all of (x, y) and an honest report of what it scores.

    A stratified evaluation split is held out first (whole groups). C is swept on an inner split
    of the rest, then refitted at that C on all the rest: the saved model's procedure on 80% of
    the labels, scored on the held-out split (HOLDOUT_METHOD). The final model is that C
    refitted on everything.
    """
    from vitdex.probes.logreg import refit, sweep

    rest, held_out = stratified_split(y, EVALUATION_FRACTION, rng, groups)
    rest_groups = None if groups is None else groups[rest]
    swept = sweep(x[rest], y[rest], len(classes), balanced=balanced, rng=rng, groups=rest_groups)
    estimate = refit(x[rest], y[rest], len(classes), swept, balanced=balanced)
    validation = classification_report(y[held_out], estimate.model.proba(x[held_out]), classes)
    validation["method"] = HOLDOUT_METHOD
    validation["measured_by"] = HOLDOUT_DESCRIPTION.format(percent=round(100 * EVALUATION_FRACTION))
    final = refit(x, y, len(classes), estimate, balanced=balanced)
    return Fitted(final, validation, held_out)


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    k: int,
    *,
    balanced: bool,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> dict:
    """Pooled out-of-fold metrics of K stratified folds (whole groups), plus each fold's
    accuracy; each fold runs the whole procedure (tune, then refit) on its training part."""
    from vitdex.probes.logreg import tune

    folds = stratified_folds(y, k, rng, groups)
    proba = np.zeros((len(y), len(classes)), np.float32)
    fold_accuracy = []
    for number, fold in enumerate(folds, start=1):
        train = np.setdiff1d(np.arange(len(y)), fold)
        train_groups = None if groups is None else groups[train]
        check_splittable(
            y[train], classes, 2, f"--cv {k} (fold {number}'s training part)", train_groups
        )
        tuned = tune(
            x[train], y[train], len(classes), balanced=balanced, rng=rng, groups=train_groups
        )
        proba[fold] = tuned.model.proba(x[fold])
        fold_accuracy.append(float(np.mean(proba[fold].argmax(axis=1) == y[fold])))
    report = classification_report(y, proba, classes)
    report.update(
        {
            "folds": k,
            "fold_accuracy": fold_accuracy,
            "accuracy_std": float(np.std(fold_accuracy)),
            "method": CV_METHOD,
        }
    )
    return report


@dataclass
class IndependentScore:
    """The saved probe's report on a --test set, the rows it could not score, and the images
    reading the set added to the library (or embedded without adding them)."""

    report: dict
    skipped: list[dict]
    ingested: int
    embedded: int


def score_test_set(
    library: Library,
    probe_model: LinearModel,
    classes: list[str],
    examples: Sequence[Example],
    feature: str,
    training: Labelled,
    *,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
    wait: bool = False,
    ingest: bool = True,
) -> IndependentScore:
    """The final probe's report on an independent labelled set. Rows it cannot score are
    skipped: unknown labels, and images that are a training image, a copy of one or a near
    duplicate of one (at the library's calibrated threshold)."""
    data = labelled_vectors(
        library, examples, feature, model=model, device=device, runtime=runtime, wait=wait,
        ingest=ingest,
    )  # fmt: skip
    both = Labelled(
        training.paths + data.paths,
        training.labels + data.labels,
        np.concatenate([training.vectors, data.vectors]),
        training.sha256s + data.sha256s,
        embedded=training.embedded + data.embedded,
    )
    groups = _groups(library, feature, both).group
    n_train = len(training.paths)
    training_path_of_group: dict[int, str] = {}
    for path, group in zip(training.paths, groups[:n_train], strict=True):
        training_path_of_group.setdefault(int(group), path)
    training_path_of_content = dict(zip(training.sha256s, training.paths, strict=True))
    skipped = list(data.skipped)
    keep = []
    for i, (path, label, sha) in enumerate(zip(data.paths, data.labels, data.sha256s, strict=True)):
        group = int(groups[n_train + i])
        if label not in classes:
            reason = "label not among the probe's"
        elif sha in training_path_of_content:
            original = training_path_of_content[sha]
            reason = (
                "also in the training labels"
                if original == path
                else f"identical to training image {original}"
            )
        elif group in training_path_of_group:
            reason = f"near duplicate of training image {training_path_of_group[group]}"
        else:
            keep.append(i)
            continue
        skipped.append({"path": path, "label": label, "reason": reason})
    for row in skipped:
        log.warning("test set: skipped %s (%s): %s", row["path"], row["label"], row["reason"])
    if not keep:
        raise LabelError("no usable rows in the test set")
    index_of = {label: i for i, label in enumerate(classes)}
    y = np.array([index_of[data.labels[i]] for i in keep], np.int64)
    report = classification_report(y, probe_model.proba(data.vectors[keep]), classes)
    report["method"] = "saved probe on the --test set"
    return IndependentScore(report, skipped, data.ingested, data.embedded)
