"""The checkpoint's own labels: stored ones for library images, the model's for other files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitdex.embedder.head import TOP_LABELS, Label
from vitdex.library.errors import NoLabelsError
from vitdex.storage import canonical

if TYPE_CHECKING:
    from vitdex.library.library import Library


@dataclass(frozen=True, slots=True)
class ImageLabels:
    """One image's labels, best first, or why it has none (an unreadable file)."""

    path: str  # canonical
    top: tuple[Label, ...]
    error: str | None = None


def image_labels(
    library: Library,
    paths: Iterable[str | Path],
    *,
    top: int = TOP_LABELS,
    model: str | None = None,
    device: str = "auto",
    runtime: str | None = None,
) -> list[ImageLabels]:
    """See `Library.labels`."""
    if top < 1:
        raise ValueError("top must be at least 1")
    spec = library.require_spec()
    wanted = [canonical(p) for p in paths]
    stored = library.store.labels.of_paths(spec, wanted)
    found: dict[str, ImageLabels] = {}
    for path, labels in stored.items():
        # Ingest keeps TOP_LABELS of them; fewer means the head has no more.
        if len(labels) >= top or len(labels) < TOP_LABELS:
            found[path] = ImageLabels(path, tuple(Label(x.label, x.score) for x in labels[:top]))
    missing = list(dict.fromkeys(p for p in wanted if p not in found))
    if missing:
        embedder = library.embedder(model, device=device, runtime=runtime)
        if embedder.head is None:
            raise NoLabelsError(
                f"no labels: the model has no classification head ({embedder.spec.model_id})"
            )
        for result in embedder.embed_files(missing, top=top):
            found[str(result.item)] = ImageLabels(
                str(result.item), result.labels or (), result.error
            )
    return [found[p] for p in wanted]


def labels_of(library: Library, image_id: int) -> tuple[Label, ...]:
    """A library image's stored labels, best first; () when it has none."""
    spec = library.store.spec()
    if spec is None:
        return ()
    return tuple(Label(x.label, x.score) for x in library.store.labels.of_image(spec, image_id))
