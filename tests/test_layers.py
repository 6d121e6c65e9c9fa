"""Intermediate layers: cls-last4 (and cls-N, mean-N, cls-lastK) chosen when a library is created,
equal to transformers' output_hidden_states, usable by search, probes and export, refused with a
how-to by a library that does not store them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from tests.conftest import TINY
from tests.photos import make_photo
from tests.test_probes_cli import COLOURS, colour_photo
from vitdex.cli.main import main
from vitdex.embedder import Embedder, EmbeddingSpec, FeatureError
from vitdex.embedder.features import canonical_features, parse_feature
from vitdex.library import Library

LAYERS = 5  # more than four, so cls-last4 leaves the first block out
HIDDEN = TINY["hidden_size"]
LAST4 = ("cls", "mean", "cls-last4")


def run(*args: object, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory) -> Path:
    """A tiny random ViT classifier (no pooler) with 5 blocks."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("deep-vit")
    torch.manual_seed(3)
    ViTForImageClassification(ViTConfig(**{**TINY, "num_hidden_layers": LAYERS})).save_pretrained(
        folder
    )
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four images in each of three colours."""
    folder = tmp_path_factory.mktemp("layer-photos")
    for index, (label, rgb) in enumerate(COLOURS.items()):
        for i in range(4):
            colour_photo(folder / label / f"{label}{i}.png", rgb, seed=10 * index + i)
    return folder


@pytest.fixture(scope="module")
def last4_library(tmp_path_factory, deep_model, photos) -> Path:
    library = tmp_path_factory.mktemp("last4") / "lib"
    data = json.loads(
        run("ingest", photos, "--library", library, "--model", deep_model,
            "--features", "cls-last4,mean,cls", "--json").stdout
    )  # fmt: skip
    assert data["added"] == 12
    return library


@pytest.fixture(scope="module")
def plain_library(tmp_path_factory, deep_model, photos) -> Path:
    """A library made with the default features (cls, mean)."""
    library = tmp_path_factory.mktemp("plain") / "lib"
    run("ingest", photos / "red", "--library", library, "--model", deep_model, "--json")
    return library


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_names_blocks_and_dims():
    assert parse_feature("cls-last4", LAYERS).blocks == (2, 3, 4, 5)
    assert parse_feature("mean-2", LAYERS).blocks == (2,)
    assert parse_feature("cls-5", LAYERS).blocks == ()  # the last block: what `cls` is
    assert parse_feature("cls", LAYERS).blocks == ()
    for bad, why in (("cls-0", "blocks 1 to 5"), ("cls-6", "blocks 1 to 5"),
                     ("cls-last6", "last1 to last5"), ("patch7", "unknown feature")):  # fmt: skip
        with pytest.raises(FeatureError, match=why):
            parse_feature(bad, LAYERS)
    assert canonical_features(["cls-last4", "mean", "cls", "cls"]) == LAST4
    spec = EmbeddingSpec("m", "local", features=LAST4, dim=HIDDEN, weights="w")
    assert spec.feature_dims == {"cls": HIDDEN, "mean": HIDDEN, "cls-last4": 4 * HIDDEN}
    assert spec.to_dict()["feature_dims"]["cls-last4"] == 4 * HIDDEN
    assert EmbeddingSpec.from_dict(spec.to_dict()) == spec
    # an old spec (one length for all) keeps its dict, hence its key
    assert "feature_dims" not in EmbeddingSpec("m", "local", dim=HIDDEN).to_dict()


def test_parity_with_transformers_output_hidden_states(deep_model, tmp_path, big_photo):
    """Every block feature equals the same computed by hand from ViTModel(output_hidden_states),
    cosine >= 0.999 per image."""
    import torch
    from transformers import AutoImageProcessor, ViTModel

    paths = [make_photo(tmp_path / f"p{seed}.jpg", size=(320, 240), seed=seed) for seed in range(3)]
    paths.append(big_photo)
    features = ["cls-last4", "mean-2", "cls-1", "mean-last2", "cls", "mean"]
    embedder = Embedder.load(str(deep_model), device="cpu", features=features)
    assert embedder.features == ("cls", "mean", "cls-1", "cls-last4", "mean-2", "mean-last2")

    processor = AutoImageProcessor.from_pretrained(deep_model)
    model = ViTModel.from_pretrained(deep_model).eval()
    for path in paths:
        ours = embedder.embed_path(path)
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
        pixels = processor(image, do_convert_rgb=True, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixels, output_hidden_states=True)
            assert len(out.hidden_states) == LAYERS + 1  # the embeddings, then each block
            normed = [model.layernorm(h)[0] for h in out.hidden_states]
        reference = {
            "cls-last4": torch.cat([normed[b][0] for b in (2, 3, 4, 5)]),
            "mean-2": normed[2][1:].mean(0),
            "cls-1": normed[1][0],
            "mean-last2": torch.cat([normed[4][1:].mean(0), normed[5][1:].mean(0)]),
            "cls": out.last_hidden_state[0, 0],
            "mean": out.last_hidden_state[0, 1:].mean(0),
        }
        for name, vector in reference.items():
            assert ours[name].shape == (embedder.spec.dim_of(name),) == vector.shape
            assert abs(float(np.linalg.norm(ours[name])) - 1) < 1e-5
            cosine = _cos(ours[name], vector.numpy())
            assert cosine >= 0.999, f"{path.name} {name}: cosine {cosine:.6f}"
    # blocks differ: the check above could not pass by comparing one vector with itself
    assert _cos(ours["cls-1"], ours["cls"]) < 0.99


def test_int8_refuses_block_features_at_creation(deep_model, photos, tmp_path):
    with pytest.raises(FeatureError, match="--runtime int8 makes only cls, mean and pooler"):
        Embedder.load(str(deep_model), device="cpu", runtime="int8", features=["cls-last4"])
    library = tmp_path / "lib"
    result = run("ingest", photos, "--library", library, "--model", deep_model, "--runtime",
                 "int8", "--features", "cls,cls-last4", expect=1)  # fmt: skip
    assert "feature cls-last4: --runtime int8" in result.output
    assert "use --runtime fp32" in result.output
    assert "Traceback" not in result.output
    with Library.open(library) as lib:
        assert lib.spec is None  # nothing was bound: the library can still be made


def test_ingest_features_are_recorded_in_the_spec(last4_library, plain_library):
    with Library.open(last4_library) as lib, Library.open(plain_library) as plain:
        spec, row = lib.spec, lib.require_spec()
        assert spec.features == LAST4
        assert row.dim_of("cls-last4") == 4 * HIDDEN and row.dim_of("cls") == HIDDEN
        assert plain.spec.features == ("cls", "mean")
        assert plain.require_spec().dim_of("mean") == HIDDEN  # no feature_dims: dim
        assert spec.key != plain.spec.key  # different stored vectors, different spec
        ids, vectors = lib.store.vectors.of_images(row, "cls-last4")
        assert vectors.shape == (12, 4 * HIDDEN)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert lib.index("cls-last4").dim == 4 * HIDDEN
        by_id = lib.store.vectors.of_image_ids(row, "cls-last4", [int(ids[0])])
        assert by_id[0].tolist() == [int(ids[0])] and by_id[1].shape == (1, 4 * HIDDEN)
    status = json.loads(run("status", "--library", last4_library, "--json").stdout)
    assert status["features"] == list(LAST4)


def test_search_probe_and_export_with_cls_last4(last4_library, deep_model, photos, tmp_path):
    query = photos / "red" / "red0.png"
    data = json.loads(
        run("search", query, "--library", last4_library, "--feature", "cls-last4", "-k", 3,
            "--json").stdout
    )  # fmt: skip
    assert data["feature"] == "cls-last4" and len(data["results"]) == 3
    with Library.open(last4_library) as lib:
        row = lib.require_spec()
        stored = lib.store.vectors.by_paths(row, "cls-last4", [str(query.resolve())])
        q = stored[str(query.resolve())][1]
        best = data["results"][0]
        other = lib.store.vectors.of_image_ids(row, "cls-last4", [best["id"]])[1][0]
        assert best["score"] == pytest.approx(float(q @ other), abs=1e-4)

    trained = json.loads(
        run("probe", "train", "colours", "--folders", photos, "--feature", "cls-last4", "--cv", 2,
            "--library", last4_library, "--json").stdout
    )  # fmt: skip
    assert trained["feature"] == "cls-last4"
    outside = colour_photo(tmp_path / "blue.png", COLOURS["blue"], seed=77)  # embedded now
    predicted = json.loads(
        run("probe", "predict", "colours", query, outside, "--library", last4_library,
            "--json").stdout
    )["predictions"]  # fmt: skip
    assert [p["path"] for p in predicted] == [str(query), str(outside)]
    assert {p["label"] for p in predicted} <= set(COLOURS)
    with Library.open(last4_library) as lib:
        (probe,) = lib.store.probes.all()
        assert probe.weights.shape == (3, 4 * HIDDEN)
    # a query outside the library is embedded with the library's features, cls-last4 included
    data = json.loads(
        run("search", outside, "--library", last4_library, "--feature", "cls-last4", "-k", 1,
            "--json").stdout
    )  # fmt: skip
    assert not data["in_library"]
    embedded = Embedder.load(str(deep_model), device="cpu", features=LAST4).embed_path(outside)
    with Library.open(last4_library) as lib:
        best = data["results"][0]
        _, other = lib.store.vectors.of_image_ids(lib.require_spec(), "cls-last4", [best["id"]])
        assert best["score"] == pytest.approx(float(embedded["cls-last4"] @ other[0]),
                                              abs=1e-4)  # fmt: skip

    out = tmp_path / "out.parquet"
    run("export", out, "--feature", "cls-last4", "--feature", "cls", "--library", last4_library)
    table = pq.read_table(out)
    exported = np.stack(table.column("cls-last4").to_numpy(zero_copy_only=False))
    assert exported.shape == (12, 4 * HIDDEN)
    assert np.stack(table.column("cls").to_numpy(zero_copy_only=False)).shape == (12, HIDDEN)
    with Library.open(last4_library) as lib:
        _ids, vectors = lib.store.vectors.of_images(lib.require_spec(), "cls-last4")
    np.testing.assert_array_equal(exported, vectors)


@pytest.mark.parametrize(
    "command",
    [
        ("search", "{query}", "--feature", "cls-last4"),
        ("export", "{out}", "--feature", "cls-last4"),
        ("probe", "train", "p", "--folders", "{photos}", "--feature", "cls-last4"),
        ("ingest", "{photos}", "--features", "cls,cls-last4"),
    ],
    ids=["search", "export", "probe-train", "ingest"],
)
def test_a_feature_the_library_does_not_store_is_refused_with_how_to(
    plain_library, photos, tmp_path, command
):
    with Library.open(plain_library) as lib:
        before = (lib.generation(), lib.store.images.count())
    values = {"query": photos / "red" / "red0.png", "out": tmp_path / "out", "photos": photos}
    args = [part.format(**values) for part in command]
    result = run(*args, "--library", plain_library, expect=1)
    message = result.output
    assert f"library {plain_library} does not store cls-last4 (it stores cls, mean)" in message
    assert "never mixes specs" in message
    assert "--library NEW_FOLDER --features cls,mean,cls-last4" in message
    assert "Traceback" not in message
    with Library.open(plain_library) as lib:
        assert (lib.generation(), lib.store.images.count()) == before
        assert lib.spec.features == ("cls", "mean")
    assert not (tmp_path / "out").exists()


def test_unknown_and_inconsistent_features(plain_library, deep_model, photos, tmp_path):
    result = run("search", photos / "red" / "red0.png", "--feature", "patch7", "--library",
                 plain_library, expect=2)  # fmt: skip
    assert "'patch7' is not a feature; features are cls, mean, pooler, cls-last4" in result.output
    result = run("ingest", photos, "--features", "cls,patch7", "--library", tmp_path / "x",
                 expect=2)  # fmt: skip
    assert "'patch7' is not a feature" in result.output
    with Library.open(plain_library) as lib, pytest.raises(FeatureError) as caught:
        lib.check_feature("patch7")
    assert "unknown feature 'patch7'; this library stores cls, mean" in str(caught.value)
    # a new library that would not store the feature --feature asks for is not created
    library = tmp_path / "lib"
    result = run("ingest", photos, "--library", library, "--model", deep_model, "--features",
                 "mean", "--feature", "cls", expect=1)  # fmt: skip
    assert "--feature cls is not among --features mean" in result.output
    result = run("ingest", photos, "--library", library, "--model", deep_model, "--features",
                 "cls,cls-9", expect=1)  # fmt: skip
    assert "feature 'cls-9': the model has blocks 1 to 5" in result.output
    with Library.open(library) as lib:
        assert lib.spec is None
