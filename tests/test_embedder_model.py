"""Embedder: loading, features and pooler detection, spec, offline errors, streaming pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.photos import make_photo
from vitdex.embedder import (
    DeviceError,
    Embedder,
    EmbeddingSpec,
    EmbedResult,
    FeatureError,
    ModelLoadError,
)
from vitdex.library.errors import VitdexError

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=REPO,
        timeout=120,
    )  # fmt: skip


def test_import_does_not_load_torch():
    code = (
        "import sys, vitdex.embedder, vitdex.embedder.model, vitdex.embedder.pipeline\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy) or 'clean')\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_offline_not_cached_gives_actionable_error(tmp_path):
    code = (
        "from vitdex.embedder import Embedder, ModelLoadError\n"
        "try:\n"
        "    Embedder.load('some-org/not-cached-model', device='cpu')\n"
        "except ModelLoadError as exc:\n"
        "    print('MLE:' + str(exc))\n"
    )
    result = _python(code, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-empty"))
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("MLE:"), result.stdout + result.stderr
    assert "some-org/not-cached-model" in message
    assert "not in the local" in message and "cache" in message
    assert "--model" in message and "folder" in message
    assert "`hf download some-org/not-cached-model --local-dir DIR`" in message
    assert "huggingface-cli" not in message  # current huggingface_hub ships only `hf`


def test_missing_local_folder_is_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Embedder.load(str(tmp_path / "nope" / "model"), device="cpu")


def test_folder_without_processor_config(tmp_path, tiny_model):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError) as caught:
        Embedder.load(str(broken), device="cpu")
    assert isinstance(caught.value, VitdexError)
    assert str(broken) in str(caught.value)


def test_pooler_refused_without_trained_weights(tiny_embedder, tiny_model):
    assert tiny_embedder.features == ("cls", "mean")
    assert tiny_embedder.check_feature("cls") == "cls"
    with pytest.raises(FeatureError) as caught:
        tiny_embedder.check_feature("pooler")
    message = str(caught.value)
    assert "no trained pooler weights" in message
    assert "classification checkpoint" in message
    assert "use cls or mean" in message
    assert str(tiny_model.resolve()) in message
    with pytest.raises(FeatureError, match="unknown feature"):
        tiny_embedder.check_feature("patch7")
    vectors = tiny_embedder.embed_images([Image.new("RGB", (50, 40), (200, 30, 30))])
    assert set(vectors) == {"cls", "mean"}


def test_pooler_accepted_when_trained(tiny_model_with_pooler, photo_dir):
    embedder = Embedder.load(str(tiny_model_with_pooler), device="cpu")
    assert embedder.features == ("cls", "mean", "pooler")
    assert embedder.check_feature("pooler") == "pooler"
    assert embedder.spec.features == ("cls", "mean", "pooler")
    vectors = embedder.embed_path(photo_dir / "photo0.jpg")
    assert vectors["pooler"].shape == (embedder.dim,)
    assert abs(float(np.linalg.norm(vectors["pooler"])) - 1) < 1e-5
    assert not np.allclose(vectors["pooler"], vectors["cls"], atol=1e-3)


def test_embed_images_shapes_and_norms(tiny_embedder, photo_dir):
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.iterdir())]
    vectors = tiny_embedder.embed_images(images)
    for feature in ("cls", "mean"):
        assert vectors[feature].shape == (4, tiny_embedder.dim)
        assert vectors[feature].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors[feature], axis=1), 1, atol=1e-5)
    assert not np.allclose(vectors["cls"][0], vectors["cls"][1])
    empty = tiny_embedder.embed_images([])
    assert empty["cls"].shape == (0, tiny_embedder.dim)


def test_spec_identity(tmp_path, tiny_model, tiny_embedder):
    spec = tiny_embedder.spec
    assert spec.model_id == str(tiny_model.resolve())
    assert spec.revision == "local"
    assert spec.dim == 32 and spec.features == ("cls", "mean") and spec.runtime == "torch-fp32"
    prep = spec.preprocessing
    assert prep["size"] == {"height": 32, "width": 32}
    assert prep["resample"] == "bilinear" and prep["mean"] == [0.5, 0.5, 0.5]
    assert prep["draft"] is True

    again = Embedder.load(str(tiny_model), device="cpu")
    assert again.spec == spec and again.spec.key == spec.key

    restored = EmbeddingSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec and restored.key == spec.key and hash(restored) == hash(spec)

    no_draft = Embedder.load(str(tiny_model), device="cpu", draft=False)
    assert no_draft.spec.key != spec.key

    other = tmp_path / "other-prep"
    shutil.copytree(tiny_model, other)
    config_path = other / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["image_mean"] = [0.485, 0.456, 0.406]
    config_path.write_text(json.dumps(config))
    changed = Embedder.load(str(other), device="cpu")
    assert changed.spec.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert changed.spec.key != spec.key


def _items(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        if i % 5 == 3:
            bad = tmp_path / f"bad{i}.jpg"
            bad.write_text("not an image")
            paths.append(bad)
        else:
            paths.append(make_photo(tmp_path / f"img{i}.jpg", size=(96, 64), seed=i))
    return paths


def test_embed_files_streams_in_order_with_errors(tmp_path, tiny_embedder):
    paths = _items(tmp_path, 40)
    pulled = 0

    def source():
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield {"path": path}

    stream = tiny_embedder.embed_files(source(), lambda item: item["path"], batch_size=4, workers=2)
    first = next(stream)
    assert isinstance(first, EmbedResult)
    assert pulled <= 2 * 4 + 2 < len(paths), f"pulled {pulled} items before the first result"
    results = [first, *stream]
    assert pulled == len(paths)
    assert [r.item["path"] for r in results] == paths
    for path, result in zip(paths, results, strict=True):
        if path.name.startswith("bad"):
            assert result.vectors is None and result.info is None and not result.ok
            assert "not an image" in result.error  # the reason; the item already names the path
        else:
            assert result.ok and result.info.width == 96 and result.info.format == "JPEG"
            expected = tiny_embedder.embed_path(path)
            for feature in ("cls", "mean"):
                np.testing.assert_allclose(result.vectors[feature], expected[feature], atol=1e-5)


def test_embed_files_plain_paths(tmp_path, tiny_embedder):
    paths = _items(tmp_path, 12)
    results = list(tiny_embedder.embed_files(iter(paths), batch_size=5))
    assert [r.item for r in results] == paths
    assert sum(r.ok for r in results) == 10


def test_embed_files_close_stops_reading_and_decoding(tmp_path, tiny_embedder, monkeypatch):
    """Closing the stream early pulls no more items, cancels queued decodes, ends the workers."""
    from vitdex.embedder import pipeline

    paths = _items(tmp_path, 40)
    decoded: list[Path] = []
    third_started, release = threading.Event(), threading.Event()
    prepare = pipeline._prepare

    def gated_prepare(embedder, path):
        decoded.append(path)
        if len(decoded) == 3:  # the worker holds the third item until the stream is closed
            third_started.set()
            assert release.wait(60), "never released"
        return prepare(embedder, path)

    monkeypatch.setattr(pipeline, "_prepare", gated_prepare)
    pulled = 0

    def source():
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield path

    before = set(threading.enumerate())
    stream = tiny_embedder.embed_files(source(), batch_size=2, workers=1)
    assert next(stream).item == paths[0]
    assert third_started.wait(60), "the worker never started the third item"
    pulled_at_close = pulled
    stream.close()
    release.set()
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("vitdex")]
    for thread in workers:
        thread.join(60)
    assert not any(thread.is_alive() for thread in workers)
    assert pulled == pulled_at_close < len(paths)
    assert decoded == paths[:3]  # the items queued behind the third one were never decoded
    with pytest.raises(StopIteration):
        next(stream)


def test_embed_files_bad_path_of(tmp_path, tiny_embedder):
    good = make_photo(tmp_path / "ok.jpg", size=(64, 64))

    def path_of(item):
        if item == "boom":
            raise KeyError(item)
        return item

    results = list(tiny_embedder.embed_files(["boom", good], path_of))
    assert not results[0].ok and "cannot get a path" in results[0].error
    assert results[1].ok


def test_unavailable_device_is_one_clear_line(tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as caught:
        Embedder.load(str(tiny_model), device="cuda")
    message = str(caught.value)
    assert isinstance(caught.value, VitdexError) and isinstance(caught.value, ModelLoadError)
    assert message.startswith("--device cuda: CUDA is not available on this machine")
    assert torch.__version__ in message and "use --device cpu or auto" in message
    assert "\n" not in message
    with pytest.raises(DeviceError, match="^--device cuda:1: CUDA is not available"):
        Embedder.load(str(tiny_model), device="cuda:1")


def test_unavailable_mps_and_unknown_devices(tiny_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="^--device mps: MPS .*not available.*use --device cpu"):
        Embedder.load(str(tiny_model), device="mps")
    with pytest.raises(DeviceError, match="^--device gpu: unknown device; use auto, cpu, cuda"):
        Embedder.load(str(tiny_model), device="gpu")
