"""What a thumbnail tile shows: shared by the gallery, the neighbours and the duplicate groups."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vitdex.library import StoredImage, display


@dataclass(frozen=True, slots=True)
class Tile:
    """An image's id, its name and path as a person reads them, the thumbnail's cache key."""

    id: int
    name: str
    path: str
    v: str
    score: float | None = None


def tile(image: StoredImage, score: float | None = None) -> Tile:
    return Tile(image.id, display(os.path.basename(image.path)), display(image.path),
                image.sha256[:12], score)  # fmt: skip
