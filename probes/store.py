"""Probes and their predictions inside the library, through the store (`library.store.probes`).

Saving, deleting and storing predictions are writes: each holds the library's write lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from vitdex.library.errors import NotFoundError
from vitdex.probes.errors import ProbeError, ProbeSpecError
from vitdex.probes.linear import LinearModel

if TYPE_CHECKING:
    from vitdex.library.library import Library
    from vitdex.storage import StoredProbe


@dataclass
class SavedProbe:
    id: int
    name: str
    spec_key: str
    feature: str
    classes: list[str]
    model: LinearModel
    metrics: dict
    created_at: datetime
    predictions: int  # stored predictions


def _saved(row: StoredProbe) -> SavedProbe:
    return SavedProbe(
        id=row.id, name=row.name, spec_key=row.spec_key, feature=row.feature,
        classes=row.classes, model=LinearModel(row.weights, row.bias), metrics=row.metrics,
        created_at=row.created_at, predictions=row.predictions,
    )  # fmt: skip


def probe_names(library: Library) -> list[str]:
    return library.store.probes.names()


def check_name_free(library: Library, name: str, *, replace: bool) -> None:
    """Refuse to overwrite a probe unless asked, before any training work is done."""
    if not name.strip():
        raise ProbeError("a probe needs a non-empty name")
    if not replace and name in probe_names(library):
        raise ProbeError(f"a probe named {name!r} exists; pass --replace to train it again")


def get_probe(library: Library, name: str, *, check_spec: bool = True) -> SavedProbe:
    """The named probe; with check_spec, only if it was trained on this library's spec."""
    row = library.store.probes.get(name)
    if row is None:
        names = probe_names(library)
        known = f"probes here: {', '.join(names)}" if names else "this library has no probes yet"
        raise NotFoundError(f"no probe named {name!r} ({known})")
    if check_spec:
        spec = library.require_spec()
        if row.spec_key != spec.key:
            raise ProbeSpecError(
                f"probe {name!r} was trained on vectors of spec {row.spec_key}, but this library"
                f" holds spec {spec.key} ({spec.model_id}); a probe only reads vectors of its own"
                f" spec. Train it again here with `vitdex probe train {name} --replace ...`"
            )
    return _saved(row)


def save_probe(
    library: Library,
    name: str,
    *,
    feature: str,
    classes: list[str],
    model: LinearModel,
    metrics: dict,
    replace: bool = False,
    wait: bool = False,
) -> SavedProbe:
    """Store the probe under `name` (replacing one of that name, and its predictions, if asked),
    under the write lock (`wait`: wait for another writer instead of failing)."""
    spec = library.require_spec()
    with library.writing(wait=wait):
        check_name_free(library, name, replace=replace)  # again: another writer may have saved it
        row = library.store.probes.save(
            spec, name, feature=feature, classes=classes, weights=model.weights,
            bias=model.bias, metrics=metrics,
        )  # fmt: skip
    return _saved(row)


def delete_probe(library: Library, name: str, *, wait: bool = False) -> None:
    """Delete the probe and its predictions, under the write lock."""
    with library.writing(wait=wait):
        get_probe(library, name, check_spec=False)
        library.store.probes.delete(name)


def list_probes(library: Library) -> list[dict]:
    """A summary per probe, with whether it fits this library's spec and its stored predictions."""
    spec = library.store.spec()
    spec_key = spec.key if spec is not None else None
    return [summary(_saved(row), spec_key) for row in library.store.probes.all()]


def summary(probe: SavedProbe, library_spec_key: str | None) -> dict:
    metrics = probe.metrics
    return {
        "name": probe.name,
        "feature": probe.feature,
        "classes": probe.classes,
        "val_accuracy": metrics.get("val_accuracy"),
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "stored_predictions": probe.predictions,
        "spec_key": probe.spec_key,
        "matches_library_spec": probe.spec_key == library_spec_key,
        "created_at": probe.created_at.isoformat(),
    }


def store_predictions(
    library: Library, probe: SavedProbe, ids: np.ndarray, labels: Sequence[str], scores: np.ndarray
) -> int:
    """Replace the probe's stored predictions with these, in one transaction; the caller holds
    the write lock. Returns how many were stored (images removed meanwhile are skipped)."""
    return library.store.probes.store_predictions(probe.id, ids, labels, scores)


def ids_predicted_as(library: Library, name: str, label: str) -> np.ndarray:
    """Image ids whose stored prediction by probe `name` is `label` (for search's allowed_ids)."""
    probe = get_probe(library, name)
    if label not in probe.classes:
        raise ProbeError(
            f"probe {name!r} has no label {label!r}; its labels are {', '.join(probe.classes)}"
        )
    if not probe.predictions:
        raise ProbeError(
            f"probe {name!r} has no stored predictions yet: run `vitdex probe predict {name} --all`"
            " first"
        )
    return library.store.probes.ids_predicted_as(probe.id, label)
