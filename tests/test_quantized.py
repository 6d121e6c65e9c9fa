"""The int8 runtime (ONNX Runtime, dynamic int8) holds the quality bar and never mixes with fp32.

Quality bar, on the tiny model: every image's vector has cosine >= 0.99 to its fp32 vector, and a
linear probe trained on int8 vectors loses at most 0.01 accuracy against one trained on fp32
vectors (same split, same trainer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.photos import photo_array
from tests.test_ingest import ingest, run
from vitdex.embedder import Embedder, ModelLoadError
from vitdex.embedder.weights import CACHE_NAME
from vitdex.library import Library
from vitdex.library.errors import SpecMismatchError
from vitdex.probes.logreg import fit, score
from vitdex.probes.split import stratified_split

CLASSES = 3
PER_CLASS = 30


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def embedders(tiny_model, int8_cache) -> tuple[Embedder, Embedder]:
    fp32 = Embedder.load(str(tiny_model), device="cpu")
    int8 = Embedder.load(str(tiny_model), device="cpu", runtime="int8", cache_dir=int8_cache)
    return fp32, int8


@pytest.fixture(scope="module")
def tinted_photos(tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """PER_CLASS photos per class; a class is the colour channel that dominates the photo."""
    folder = tmp_path_factory.mktemp("tinted")
    paths, labels = [], []
    for label in range(CLASSES):
        for i in range(PER_CLASS):
            array = photo_array((64, 48), seed=1000 * label + i).astype(np.float32)
            array *= np.where(np.arange(3) == label, 1.0, 0.6)
            path = folder / f"c{label}-{i}.jpg"
            Image.fromarray(array.astype(np.uint8)).save(path, quality=90)
            paths.append(path)
            labels.append(label)
    return paths, np.array(labels)


def _vectors(embedder: Embedder, paths: list[Path]) -> dict[str, np.ndarray]:
    results = list(embedder.embed_files(paths, batch_size=8))
    assert all(r.ok for r in results)
    return {name: np.stack([r.vectors[name] for r in results]) for name in embedder.features}


def test_int8_spec_is_its_own(embedders):
    fp32, int8 = embedders
    assert int8.spec.runtime == "onnx-int8" and fp32.spec.runtime == "torch-fp32"
    assert int8.spec.key != fp32.spec.key
    assert int8.features == fp32.features and int8.dim == fp32.dim


def test_int8_vectors_are_close_to_fp32(embedders, tinted_photos):
    fp32, int8 = embedders
    paths, _ = tinted_photos
    a, b = _vectors(fp32, paths), _vectors(int8, paths)
    for feature in fp32.features:
        np.testing.assert_allclose(np.linalg.norm(b[feature], axis=1), 1.0, atol=1e-5)
        cosine = (a[feature] * b[feature]).sum(axis=1)
        assert cosine.min() >= 0.99, (feature, cosine.min())


def test_int8_probe_accuracy_within_a_point(embedders, tinted_photos):
    fp32, int8 = embedders
    paths, labels = tinted_photos
    train, test = stratified_split(labels, 0.5, np.random.default_rng(0))
    accuracies = []
    for embedder in (fp32, int8):
        x = _vectors(embedder, paths)["cls"]
        model, _ = fit(x[train], labels[train], CLASSES, l2=1e-3)
        accuracies.append(score(model, x[test], labels[test], CLASSES)["accuracy"])
    assert accuracies[0] > 1 / CLASSES + 0.2, accuracies  # the probe learns something at all
    assert accuracies[1] >= accuracies[0] - 0.01, accuracies


def test_int8_model_is_built_once_per_spec(tiny_model, embedders, int8_cache):
    _, int8 = embedders
    cached = int8_cache / f"{int8.spec.key}.onnx"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    again = Embedder.load(str(tiny_model), device="cpu", runtime="int8", cache_dir=int8_cache)
    assert cached.stat().st_mtime_ns == stamp
    assert again.spec == int8.spec
    # no export leftovers: the model and the weight digests (embedder/weights.py) only
    assert sorted(p.name for p in int8_cache.iterdir()) == sorted([cached.name, CACHE_NAME])


def test_int8_refuses_a_gpu_and_unknown_runtimes(tiny_model):
    with pytest.raises(ModelLoadError, match="CPU"):
        Embedder.load(str(tiny_model), device="cuda", runtime="int8")
    with pytest.raises(ModelLoadError, match="unknown runtime"):
        Embedder.load(str(tiny_model), device="cpu", runtime="int4")


def test_library_keeps_its_runtime(tmp_path, tiny_model, photo_dir):
    library = tmp_path / "lib"
    report = ingest(library, photo_dir, model=tiny_model, extra=("--runtime", "int8"))
    assert report["added"] == 4
    # a new int8 library is checked against fp32 on the user's own photos, and status says so
    check = report["int8_check"]
    assert check["images"] == 4 and {f["feature"] for f in check["features"]} == {"cls", "mean"}
    assert run("status", "--library", library, "--json")["int8_check"] == check
    assert "int8      int8 check (4 photos): cls cosine mean" in run("status", "--library", library)
    assert ingest(library, photo_dir)["int8_check"] is None  # once, at creation
    with Library.open(library) as lib:
        assert lib.spec.runtime == "onnx-int8"
        models = sorted(p.name for p in (library / "models").iterdir())
        assert len(models) == 2 and models[0].endswith(".onnx") and models[1] == CACHE_NAME
    # Without --runtime the library's own runtime is used: a search embeds with int8.
    query = tmp_path / "query.png"
    Image.open(photo_dir / "photo0.jpg").save(query)
    hits = run("search", query, "--library", library, "--json")
    assert hits["results"][0]["path"].endswith("photo0.jpg")
    # Asking for the other runtime is refused, naming the way out.
    out = run("ingest", photo_dir, "--library", library, "--runtime", "fp32", expect=1)
    assert "--runtime int8" in out and "--library NEW_FOLDER" in out
    with Library.open(library) as lib, pytest.raises(SpecMismatchError):
        lib.embedder(device="cpu", runtime="fp32")
