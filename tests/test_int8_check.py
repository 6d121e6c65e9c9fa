"""The int8 check: fp32 vs int8 agreement on the library's own photos, its bar and its warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.photos import photo_array
from tests.test_ingest import ingest
from vitdex.embedder import Embedder, decode_image
from vitdex.library import Library
from vitdex.library.errors import LibraryError
from vitdex.library.int8_check import (
    COSINE_BAR,
    META_KEY,
    OVERLAP_BAR,
    TOP_K,
    check_int8,
    read_int8_check,
)

PHOTOS = 14


@pytest.fixture(scope="module")
def int8_library(tmp_path_factory, tiny_model) -> tuple[Path, list[str]]:
    """An int8 library of PHOTOS distinct photos, and their paths."""
    root = tmp_path_factory.mktemp("int8-check")
    folder = root / "photos"
    folder.mkdir()
    paths = []
    for seed in range(PHOTOS):
        path = folder / f"p{seed:02}.jpg"
        Image.fromarray(photo_array((96, 72), seed=100 + seed)).save(path, quality=90)
        paths.append(str(path))
    report = ingest(root / "lib", folder, model=tiny_model, extra=("--runtime", "int8"))
    assert report["added"] == PHOTOS
    return root / "lib", paths


@pytest.fixture
def library(int8_library):
    with Library.open(int8_library[0]) as lib:
        yield lib


def _independent(fp32: Embedder, int8: Embedder, paths: list[str], feature: str, k: int):
    """Mean/min cosine and top-k overlap, computed another way: from PIL images, with sets.

    One batch, as the check embeds up to 16: dynamic int8 scales activations per batch, so an
    image's int8 vector moves (about 1e-5) with its batch mates.
    """
    target = fp32.preprocessor.target_size
    images = [decode_image(p, target, draft=fp32.draft)[0] for p in paths]
    a = fp32.embed_images(images)[feature].astype(np.float64)
    b = int8.embed_images(images)[feature].astype(np.float64)
    cosines = [x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b, strict=True)]

    def neighbours(vectors: np.ndarray, i: int) -> set[int]:
        others = sorted(
            (j for j in range(len(paths)) if j != i), key=lambda j: -vectors[i] @ vectors[j]
        )
        return set(others[:k])

    overlap = np.mean([len(neighbours(a, i) & neighbours(b, i)) / k for i in range(len(paths))])
    return float(np.mean(cosines)), float(np.min(cosines)), float(overlap)


def test_figures_equal_an_independent_computation(library, int8_library, tiny_model):
    _, paths = int8_library
    check = check_int8(library, paths)
    assert (check.images, check.unreadable, check.k) == (PHOTOS, 0, TOP_K)
    fp32 = Embedder.load(str(tiny_model), device="cpu")
    int8 = library.embedder()
    assert [f.feature for f in check.features] == list(int8.features)
    for figures in check.features:
        mean, low, overlap = _independent(fp32, int8, paths, figures.feature, TOP_K)
        assert figures.mean_cosine == pytest.approx(mean, abs=1e-6)
        assert figures.min_cosine == pytest.approx(low, abs=1e-6)
        assert figures.overlap == pytest.approx(overlap, abs=1e-9)
        assert figures.mean_cosine >= COSINE_BAR and figures.overlap >= OVERLAP_BAR
    assert check.passes and check.warning is None and check.k_note is None
    assert read_int8_check(library) == check
    assert json.loads(library.store.get_meta(META_KEY)) == check.to_dict()


def test_a_sample_smaller_than_eleven_compares_fewer_neighbours(library, int8_library):
    _, paths = int8_library
    check = check_int8(library, paths, sample=6)
    assert (check.images, check.k) == (6, 5)
    assert check.k_note == "top-5 overlap, not top-10: the sample has only 6 images"
    assert all(f.overlap is not None for f in check.features)
    assert any("top-5 overlap" in line for line in check.lines())


def test_broken_int8_fails_the_bar_and_suggests_fp32(library, int8_library, monkeypatch):
    _, paths = int8_library
    rng = np.random.default_rng(0)

    def random_vectors(self, hidden, pooler):
        n = len(hidden)
        out = {
            name: rng.standard_normal((n, self.dim)).astype(np.float32) for name in self.features
        }
        return {name: v / np.linalg.norm(v, axis=1, keepdims=True) for name, v in out.items()}

    monkeypatch.setattr(Embedder, "_int8_features", random_vectors)
    check = check_int8(library, paths)
    assert not check.passes
    assert all(f.mean_cosine < 0.5 and not f.passes for f in check.features)
    assert check.warning is not None and "\n" not in check.warning
    assert "--runtime fp32" in check.warning and "cosine" in check.warning
    assert check.lines()[-1] == check.warning
    assert read_int8_check(library).passes is False


def test_unreadable_files_are_skipped_and_counted(library, int8_library, tmp_path):
    _, paths = int8_library
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    check = check_int8(library, [*paths, str(broken)])
    assert (check.images, check.unreadable) == (PHOTOS, 1)


def test_a_check_of_another_spec_is_not_shown(library, int8_library):
    check = check_int8(library, int8_library[1], sample=3)
    stale = check.to_dict() | {"spec_key": "another-spec"}
    library.store.set_meta(META_KEY, json.dumps(stale))
    assert read_int8_check(library) is None
    library.store.set_meta(META_KEY, "{not json")
    assert read_int8_check(library) is None


def test_an_fp32_embedder_is_not_checked(library, int8_library, tiny_embedder):
    with pytest.raises(LibraryError, match="not an int8 library"):
        check_int8(library, int8_library[1], int8=tiny_embedder)
