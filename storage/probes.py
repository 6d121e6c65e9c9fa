"""Probes and their stored predictions: raw float32 weights (never pickle), bound to the spec."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, insert, select

from vitdex.storage.images import chunks
from vitdex.storage.models import Image, Prediction, Probe

if TYPE_CHECKING:
    from vitdex.storage.store import Store, StoredSpec

INSERT_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class StoredProbe:
    id: int
    name: str
    spec_key: str
    feature: str
    classes: list[str]
    weights: np.ndarray  # (classes, dim) float32
    bias: np.ndarray
    metrics: dict
    created_at: datetime
    predictions: int  # stored predictions


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    probe: str
    label: str
    score: float


def _probe(row: Probe, predictions: int) -> StoredProbe:
    classes = json.loads(row.classes_json)
    return StoredProbe(
        id=row.id, name=row.name, spec_key=row.spec_key, feature=row.feature, classes=classes,
        weights=np.frombuffer(row.weights, "<f4").reshape(len(classes), row.dim).astype(np.float32),
        bias=np.frombuffer(row.bias, "<f4").astype(np.float32),
        metrics=json.loads(row.metrics_json), created_at=row.created_at, predictions=predictions,
    )  # fmt: skip


def _with_counts():
    return (
        select(Probe, func.count(Prediction.image_id))
        .outerjoin(Prediction, Prediction.probe_id == Probe.id)
        .group_by(Probe.id)
    )


class Probes:
    """The store's statements about probes and predictions."""

    def __init__(self, store: Store):
        self.store = store

    def names(self) -> list[str]:
        with self.store.snapshot() as s:
            return list(s.scalars(select(Probe.name).order_by(Probe.name)))

    def all(self) -> list[StoredProbe]:
        with self.store.snapshot() as s:
            return [_probe(row, n) for row, n in s.execute(_with_counts().order_by(Probe.name))]

    def get(self, name: str) -> StoredProbe | None:
        with self.store.snapshot() as s:  # read the row before the snapshot ends and expires it
            row = s.execute(_with_counts().where(Probe.name == name)).first()
            return None if row is None else _probe(*row)

    def save(
        self,
        spec: StoredSpec,
        name: str,
        *,
        feature: str,
        classes: list[str],
        weights: np.ndarray,
        bias: np.ndarray,
        metrics: dict,
    ) -> StoredProbe:
        """Store a probe under `name`, replacing one of that name and its predictions."""
        with self.store.transaction() as s:
            s.execute(delete(Probe).where(Probe.name == name))  # predictions cascade
            row = Probe(
                name=name, spec_id=spec.id, spec_key=spec.key, feature=feature,
                classes_json=json.dumps(classes), dim=int(weights.shape[1]),
                weights=np.ascontiguousarray(weights, dtype="<f4").tobytes(),
                bias=np.ascontiguousarray(bias, dtype="<f4").tobytes(),
                metrics_json=json.dumps(metrics), created_at=datetime.now(UTC),
            )  # fmt: skip
            s.add(row)
            s.flush()
            return _probe(row, 0)

    def delete(self, name: str) -> None:
        with self.store.transaction() as s:
            s.execute(delete(Probe).where(Probe.name == name))

    def store_predictions(
        self, probe_id: int, ids: np.ndarray, labels: Sequence[str], scores: np.ndarray
    ) -> int:
        """Replace the probe's stored predictions, in one transaction. Images removed since the
        vectors were read are skipped, so a concurrent removal never breaks a foreign key."""
        with self.store.transaction() as s:
            s.execute(delete(Prediction).where(Prediction.probe_id == probe_id))
            live: set[int] = set()
            for part in chunks((int(i) for i in ids), 5000):
                live.update(s.scalars(select(Image.id).where(Image.id.in_(part))))
            rows = [
                {"probe_id": probe_id, "image_id": int(i), "label": label, "score": float(score)}
                for i, label, score in zip(ids, labels, scores, strict=True)
                if int(i) in live
            ]
            for start in range(0, len(rows), INSERT_CHUNK):
                s.execute(insert(Prediction), rows[start : start + INSERT_CHUNK])
        return len(rows)

    def ids_predicted_as(self, probe_id: int, label: str) -> np.ndarray:
        with self.store.snapshot() as s:
            return np.fromiter(
                s.scalars(select(Prediction.image_id).where(
                    Prediction.probe_id == probe_id, Prediction.label == label
                )), np.int64,
            )  # fmt: skip

    def labels(self) -> list[tuple[str, str]]:
        """(probe name, label) pairs that have stored predictions."""
        with self.store.snapshot() as s:
            rows = s.execute(
                select(Probe.name, Prediction.label)
                .join(Prediction, Prediction.probe_id == Probe.id)
                .distinct().order_by(Probe.name, Prediction.label)
            )  # fmt: skip
            return [(name, label) for name, label in rows]

    def of_image(self, image_id: int) -> list[StoredPrediction]:
        with self.store.snapshot() as s:
            return [StoredPrediction(*row) for row in s.execute(
                select(Probe.name, Prediction.label, Prediction.score)
                .join(Probe, Probe.id == Prediction.probe_id).where(Prediction.image_id == image_id)
                .order_by(Probe.name)
            )]  # fmt: skip
