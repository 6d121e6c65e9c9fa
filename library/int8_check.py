"""How close int8 vectors are to fp32 ones on the user's own photos (docs/int8.md).

`--runtime int8` was validated on random weights, where int8 is nearly exact. Real ViTs have
activation outliers that dynamic int8 handles worse, and a user's photos are not our test set.
So a library made with `--runtime int8` embeds a sample of its own photos both ways, from the
same decoded pixels, and keeps the agreement in its meta: per stored feature, the mean and
minimum cosine between each image's fp32 and int8 vector, and the mean overlap of each image's
top-k neighbours within the sample. Below the bar (COSINE_BAR, OVERLAP_BAR) the user is told,
and pointed to fp32.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from vitdex.library.errors import LibraryError

if TYPE_CHECKING:
    from vitdex.embedder import Embedder
    from vitdex.library.library import Library

log = logging.getLogger(__name__)

COSINE_BAR = 0.99
"""Each feature's mean cosine between fp32 and int8 vectors must reach this."""
OVERLAP_BAR = 0.9
"""Each feature's mean top-k neighbour overlap (fp32 vs int8, within the sample) must reach this."""
TOP_K = 10
SAMPLE = 64
META_KEY = "int8_check"
_BATCH = 16
_SEED = 0  # the same photos are sampled on every run: figures are reproducible


@dataclass(frozen=True, slots=True)
class FeatureAgreement:
    """fp32 vs int8 for one feature; `overlap` is None with fewer than 2 images."""

    feature: str
    mean_cosine: float
    min_cosine: float
    overlap: float | None

    @property
    def passes(self) -> bool:
        return self.mean_cosine >= COSINE_BAR and (self.overlap is None or
                                                   self.overlap >= OVERLAP_BAR)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Int8Check:
    """The agreement of int8 with fp32 on `images` photos of the library, per stored feature."""

    spec_key: str  # the int8 spec checked: a check of another spec is stale
    images: int  # photos embedded both ways
    unreadable: int  # sampled files that could not be decoded (skipped, not counted)
    k: int  # neighbours compared: TOP_K, or images - 1 when the sample is smaller
    features: tuple[FeatureAgreement, ...]
    passes: bool

    @property
    def k_note(self) -> str | None:
        """Why k is not TOP_K, in words; None when it is."""
        if self.k == TOP_K:
            return None
        if self.k == 0:
            return f"no neighbour overlap: the sample has {self.images} image(s)"
        return f"top-{self.k} overlap, not top-{TOP_K}: the sample has only {self.images} images"

    @property
    def warning(self) -> str | None:
        """One line when int8 falls below the bar (suggesting fp32); None when it passes."""
        if self.passes:
            return None
        below = "; ".join(
            f"{f.feature}: mean cosine {f.mean_cosine:.4f}, top-{self.k} overlap "
            + ("n/a" if f.overlap is None else f"{f.overlap:.2f}")
            for f in self.features
            if not f.passes
        )
        return (
            f"int8 vectors differ from fp32 on {self.images} of your photos ({below}; bar: cosine"
            f" {COSINE_BAR}, overlap {OVERLAP_BAR}): search results may differ from fp32; for"
            " fp32 quality, start a new library with --runtime fp32"
        )

    def lines(self) -> list[str]:
        """The figures for `vitdex status`, one line per feature, then the note and warning."""
        lines = [
            f"int8 check ({self.images} photos): {f.feature} cosine mean {f.mean_cosine:.4f} min"
            f" {f.min_cosine:.4f}, top-{self.k} overlap "
            + ("n/a" if f.overlap is None else f"{f.overlap:.2f}")
            for f in self.features
        ]
        return lines + [line for line in (self.k_note, self.warning) if line]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["features"] = [asdict(f) for f in self.features]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Int8Check:
        features = tuple(FeatureAgreement(**f) for f in data["features"])
        return cls(**{**data, "features": features})


def check_int8(
    library: Library,
    paths: list[str],
    *,
    sample: int = SAMPLE,
    fp32: Embedder | None = None,
    int8: Embedder | None = None,
) -> Int8Check:
    """Embed up to `sample` of `paths` with fp32 and int8, compare, store in the library's meta.

    `int8` defaults to the library's own embedder (already loaded after an ingest), `fp32` to
    the same model loaded with the fp32 runtime. Files that cannot be decoded are skipped and
    others sampled in their place. Raises LibraryError unless the library is an int8 library.
    """
    int8 = int8 or library.embedder()
    if int8.spec.runtime != "onnx-int8":
        raise LibraryError(f"library {library.folder} is not an int8 library: nothing to check")
    pixels, unreadable = _sample_pixels(int8, paths, sample)
    n = len(pixels)
    k = min(TOP_K, max(n - 1, 0))
    features: tuple[FeatureAgreement, ...] = ()
    if n:
        a = _embed(fp32 or _fp32_twin(library, int8), pixels)
        b = _embed(int8, pixels)
        features = tuple(_agreement(name, a[name], b[name], k) for name in int8.features)
    check = Int8Check(
        spec_key=int8.spec.key,
        images=n,
        unreadable=unreadable,
        k=k,
        features=features,
        passes=all(f.passes for f in features),
    )
    library.store.set_meta(META_KEY, json.dumps(check.to_dict()))
    return check


def read_int8_check(library: Library) -> Int8Check | None:
    """The stored check of the library's current spec; None if none (or it is stale/damaged)."""
    text = library.store.get_meta(META_KEY)
    spec = library.spec
    if not text or spec is None:
        return None
    try:
        check = Int8Check.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("the stored int8 check is unreadable (%s); it is ignored", exc)
        return None
    return check if check.spec_key == spec.key else None


def _fp32_twin(library: Library, int8: Embedder) -> Embedder:
    """The library's model with the fp32 runtime, on the CPU, at the same revision."""
    from vitdex.embedder import Embedder

    revision = None if int8.spec.revision in ("local", "unknown") else int8.spec.revision
    cache = None if library.read_only else library.folder / "models"
    return Embedder.load(int8.spec.model_id, device="cpu", revision=revision,
                         draft=int8.draft, cache_dir=cache)  # fmt: skip


def _sample_pixels(embedder: Embedder, paths: list[str], sample: int) -> tuple[np.ndarray, int]:
    """Preprocessed pixels of up to `sample` decodable files, drawn in a fixed random order."""
    from vitdex.embedder import DecodeError, decode_image

    order = sorted(set(paths))
    random.Random(_SEED).shuffle(order)
    target = embedder.preprocessor.target_size
    pixels, unreadable = [], 0
    for path in order:
        if len(pixels) == sample:
            break
        try:
            image, _info = decode_image(path, target, draft=embedder.draft)
        except DecodeError as exc:
            log.info("int8 check: %s", exc)
            unreadable += 1
            continue
        pixels.append(embedder.preprocessor(image))
    return (np.stack(pixels) if pixels else np.zeros((0,), np.float32)), unreadable


def _embed(embedder: Embedder, pixels: np.ndarray) -> dict[str, np.ndarray]:
    parts = [embedder.embed_pixels(pixels[i : i + _BATCH]) for i in range(0, len(pixels), _BATCH)]
    return {name: np.concatenate([p[name] for p in parts]) for name in embedder.features}


def _agreement(feature: str, a: np.ndarray, b: np.ndarray, k: int) -> FeatureAgreement:
    """Cosines of matching rows (vectors are unit length) and the top-k overlap within the set."""
    cosine = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    overlap = None
    if k > 0:
        top_a, top_b = _top_k(a, k), _top_k(b, k)
        shared = [len(set(x) & set(y)) for x, y in zip(top_a, top_b, strict=True)]
        overlap = float(np.mean(shared) / k)
    return FeatureAgreement(feature, float(cosine.mean()), float(cosine.min()), overlap)


def _top_k(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows by inner product (itself excluded)."""
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]
