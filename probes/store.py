"""Probes and their predictions inside the library: Probe and Prediction rows, raw float32."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, insert, select

from vitdex.library.errors import NotFoundError
from vitdex.probes.errors import ProbeError, ProbeSpecError
from vitdex.probes.linear import LinearModel
from vitdex.storage import Prediction, Probe, Spec

if TYPE_CHECKING:
    from vitdex.library.library import Library

INSERT_CHUNK = 5_000


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


def _from_row(row: Probe) -> SavedProbe:
    classes = json.loads(row.classes_json)
    weights = np.frombuffer(row.weights, "<f4").reshape(len(classes), row.dim).astype(np.float32)
    bias = np.frombuffer(row.bias, "<f4").astype(np.float32)
    return SavedProbe(
        id=row.id, name=row.name, spec_key=row.spec_key, feature=row.feature, classes=classes,
        model=LinearModel(weights, bias),
        metrics=json.loads(row.metrics_json), created_at=row.created_at,
    )


def probe_names(library: Library) -> list[str]:
    with library.sessions() as session:
        return list(session.scalars(select(Probe.name).order_by(Probe.name)))


def check_name_free(library: Library, name: str, *, replace: bool) -> None:
    """Refuse to overwrite a probe unless asked, before any training work is done."""
    if not name.strip():
        raise ProbeError("a probe needs a non-empty name")
    if not replace and name in probe_names(library):
        raise ProbeError(f"a probe named {name!r} exists; pass --replace to train it again")


def get_probe(library: Library, name: str, *, check_spec: bool = True) -> SavedProbe:
    """The named probe; with check_spec, only if it was trained on this library's spec."""
    with library.sessions() as session:
        row = session.scalar(select(Probe).where(Probe.name == name))
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
    return _from_row(row)


def save_probe(
    library: Library,
    name: str,
    *,
    feature: str,
    classes: list[str],
    model: LinearModel,
    metrics: dict,
    replace: bool = False,
) -> SavedProbe:
    """Store the probe under `name` (replacing one of that name, and its predictions, if asked)."""
    spec = library.require_spec()
    with library.sessions.begin() as session:
        old = session.scalar(select(Probe).where(Probe.name == name))
        if old is not None:
            if not replace:
                raise ProbeError(f"a probe named {name!r} exists; pass --replace to train it again")
            session.execute(delete(Prediction).where(Prediction.probe_id == old.id))
            session.delete(old)
            session.flush()
        row = Probe(
            name=name, spec_id=spec.id, spec_key=spec.key, feature=feature,
            classes_json=json.dumps(classes), dim=int(model.weights.shape[1]),
            weights=np.ascontiguousarray(model.weights, dtype="<f4").tobytes(),
            bias=np.ascontiguousarray(model.bias, dtype="<f4").tobytes(),
            metrics_json=json.dumps(metrics), created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        return _from_row(row)


def delete_probe(library: Library, name: str) -> None:
    probe = get_probe(library, name, check_spec=False)
    with library.sessions.begin() as session:
        session.execute(delete(Prediction).where(Prediction.probe_id == probe.id))
        session.execute(delete(Probe).where(Probe.id == probe.id))


def list_probes(library: Library) -> list[dict]:
    """A summary per probe, with whether it fits this library's spec and its stored predictions."""
    with library.sessions() as session:
        rows = session.execute(
            select(Probe, func.count(Prediction.image_id))
            .outerjoin(Prediction, Prediction.probe_id == Probe.id)
            .group_by(Probe.id)
            .order_by(Probe.name)
        ).all()
        spec_key = session.scalar(select(Spec.key).order_by(Spec.id))
    return [summary(_from_row(row), predictions, spec_key) for row, predictions in rows]


def summary(probe: SavedProbe, predictions: int, library_spec_key: str | None) -> dict:
    metrics = probe.metrics
    return {
        "name": probe.name,
        "feature": probe.feature,
        "classes": probe.classes,
        "val_accuracy": metrics.get("val_accuracy"),
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "stored_predictions": predictions,
        "spec_key": probe.spec_key,
        "matches_library_spec": probe.spec_key == library_spec_key,
        "created_at": probe.created_at.isoformat(),
    }


def prediction_count(library: Library, probe_id: int) -> int:
    with library.sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.probe_id == probe_id)
        )


def store_predictions(
    library: Library, probe: SavedProbe, ids: np.ndarray, labels: list[str], scores: np.ndarray
) -> int:
    """Replace the probe's stored predictions with these, in one transaction."""
    with library.sessions.begin() as session:
        session.execute(delete(Prediction).where(Prediction.probe_id == probe.id))
        for start in range(0, len(ids), INSERT_CHUNK):
            end = start + INSERT_CHUNK
            session.execute(
                insert(Prediction),
                [
                    {"probe_id": probe.id, "image_id": int(i), "label": label, "score": float(s)}
                    for i, label, s in zip(ids[start:end], labels[start:end], scores[start:end],
                                           strict=True)
                ],
            )
    return len(ids)


def ids_predicted_as(library: Library, name: str, label: str) -> np.ndarray:
    """Image ids whose stored prediction by probe `name` is `label` (for search's allowed_ids)."""
    probe = get_probe(library, name)
    if label not in probe.classes:
        raise ProbeError(
            f"probe {name!r} has no label {label!r}; its labels are {', '.join(probe.classes)}"
        )
    if not prediction_count(library, probe.id):
        raise ProbeError(
            f"probe {name!r} has no stored predictions yet: run `vitdex probe predict {name} --all`"
            " first"
        )
    with library.sessions() as session:
        return np.fromiter(
            session.scalars(
                select(Prediction.image_id).where(
                    Prediction.probe_id == probe.id, Prediction.label == label
                )
            ),
            np.int64,
        )
