"""EmbeddingSpec identity: keyed on what makes the vectors, never on where the model lies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import save_tiny_vit
from vitdex.embedder import Embedder, EmbeddingSpec
from vitdex.embedder import weights as weights_module
from vitdex.embedder.weights import weight_files, weights_digest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_moved_model_folder_keeps_its_key(tmp_path, tiny_model, tiny_embedder):
    moved = tmp_path / "elsewhere" / "renamed-model"
    shutil.copytree(tiny_model, moved)
    copy = Embedder.load(str(moved), device="cpu")
    assert copy.spec.key == tiny_embedder.spec.key
    assert copy.spec.model_id == str(moved.resolve())  # where to load from: information only
    assert copy.spec.revision == tiny_embedder.spec.revision == "local"
    assert copy.spec.weights == _sha256(tiny_model / "model.safetensors")
    assert str(tiny_model) not in json.dumps(copy.spec.to_dict())


def test_changed_weights_change_the_key(tmp_path, tiny_embedder):
    other = save_tiny_vit(tmp_path / "other-weights", seed=5)
    changed = Embedder.load(str(other), device="cpu")
    assert changed.spec.preprocessing == tiny_embedder.spec.preprocessing
    assert changed.spec.weights != tiny_embedder.spec.weights
    assert changed.spec.key != tiny_embedder.spec.key


def test_changed_architecture_changes_the_key(tmp_path, tiny_model, tiny_embedder):
    """Same weight bytes, a config that computes differently: different vectors, other key."""
    other = tmp_path / "other-eps"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["layer_norm_eps"] = 1e-3
    (other / "config.json").write_text(json.dumps(config))
    changed = Embedder.load(str(other), device="cpu")
    assert changed.spec.weights == tiny_embedder.spec.weights
    assert changed.spec.key != tiny_embedder.spec.key


def test_model_id_and_revision_are_not_in_the_key(tiny_embedder):
    spec = tiny_embedder.spec
    renamed = dataclasses.replace(spec, model_id="org/other-name", revision="0" * 40)
    assert renamed.key == spec.key
    for change in (
        {"weights": "f" * 64},
        {"dim": spec.dim + 1},
        {"runtime": "onnx-int8"},
        {"features": ("cls",)},
        {"preprocessing": {**spec.preprocessing, "draft": not spec.preprocessing["draft"]}},
    ):
        assert dataclasses.replace(spec, **change).key != spec.key, change


def test_old_spec_dict_without_weights_reads_back_with_its_old_key():
    old = {
        "model_id": "/photos/models/vit",
        "revision": "local-0123456789abcdef",
        "preprocessing": {"size": {"height": 224, "width": 224}, "draft": True},
        "features": ["cls", "mean"],
        "dim": 768,
        "runtime": "torch-fp32",
    }
    spec = EmbeddingSpec.from_dict(old)
    assert spec.weights == "" and spec.architecture == {}
    # The key libraries stored before weights existed: sha256 of the canonical old dict.
    canonical = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert spec.key == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert EmbeddingSpec.from_dict({**old, "model_id": "/moved"}).key != spec.key


def test_spec_round_trips_through_json(tiny_embedder):
    spec = tiny_embedder.spec
    restored = EmbeddingSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec and restored.key == spec.key
    assert restored.weights == spec.weights and len(spec.weights) == 64


def test_weights_digest_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"A" * 1000)
    cache = tmp_path / "cache"
    first = weights_digest([weights], cache)
    assert first == _sha256(weights)

    reads: list[str] = []
    original = weights_module._hash_file
    monkeypatch.setattr(
        weights_module, "_hash_file", lambda path: reads.append(path) or original(path)
    )
    assert weights_digest([weights], cache) == first
    assert reads == []  # served from the cache, not rehashed

    weights.write_bytes(b"B" * 1000)  # same size, new content and mtime
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert weights_digest([weights], cache) == _sha256(weights) != first
    assert reads == [os.path.realpath(weights)]


def test_weights_digest_reads_the_name_of_a_hub_cache_blob(tmp_path, monkeypatch):
    """A hub cache stores LFS files as blobs/<sha256>: the name is the digest, nothing is read."""
    blob_digest = "ab" * 32
    blobs = tmp_path / "models--org--name" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / blob_digest).write_bytes(b"not really those weights")
    snapshot = tmp_path / "models--org--name" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / blob_digest)
    monkeypatch.setattr(weights_module, "_hash_file", lambda path: pytest.fail("rehashed"))
    assert weights_digest([snapshot / "model.safetensors"], None) == blob_digest


def test_sharded_weights_hash_the_ordered_shard_digests(tmp_path):
    shards = [tmp_path / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for i, shard in enumerate(shards):
        shard.write_bytes(bytes([i]) * 100)
    digest = weights_digest(shards, None)
    expected = hashlib.sha256("\n".join(_sha256(s) for s in shards).encode()).hexdigest()
    assert digest == expected
    assert weights_digest(shards[::-1], None) != digest


def test_sharded_folder_lists_shards_in_order(tmp_path):
    index = {
        "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [p.name for p in weight_files(tmp_path)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


class _FakeHub:
    """Stands in for the hub: a cache snapshot folder per commit, with the tiny model inside."""

    def __init__(self, root: Path, tiny_model: Path) -> None:
        self.root = root
        self.tiny_model = tiny_model
        self.calls: list[tuple[str, str, str | None]] = []

    def snapshot(self, revision: str | None) -> Path:
        commit = revision or "a" * 40  # what `main` points to today
        folder = self.root / "models--org--vit" / "snapshots" / commit
        if not folder.exists():
            shutil.copytree(self.tiny_model, folder)
        return folder

    def cached_file(self, repo: str, filename: str, revision: str | None = None, **_: object):
        self.calls.append(("cached_file", repo, revision))
        return str(self.snapshot(revision) / filename)


def test_hub_model_loads_and_records_the_pinned_commit(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoImageProcessor, ViTModel

    hub = _FakeHub(tmp_path / "hub", tiny_model)
    monkeypatch.setattr("transformers.utils.cached_file", hub.cached_file)
    model_from = ViTModel.from_pretrained.__func__
    processor_from = AutoImageProcessor.from_pretrained.__func__

    def fake_model(cls, source, *args, revision=None, **kwargs):
        hub.calls.append(("model", source, revision))
        return model_from(cls, str(hub.snapshot(revision)), *args, **kwargs)

    def fake_processor(cls, source, *args, revision=None, **kwargs):
        hub.calls.append(("processor", source, revision))
        return processor_from(cls, str(hub.snapshot(revision)), *args, **kwargs)

    monkeypatch.setattr(ViTModel, "from_pretrained", classmethod(fake_model))
    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(fake_processor))

    pinned = "b" * 40
    embedder = Embedder.load("org/vit", device="cpu", revision=pinned)
    assert embedder.spec.model_id == "org/vit"
    assert embedder.spec.revision == pinned
    assert ("model", "org/vit", pinned) in hub.calls
    assert ("processor", "org/vit", pinned) in hub.calls

    hub.calls.clear()
    latest = Embedder.load("org/vit", device="cpu")  # no revision: whatever main is, recorded
    assert latest.spec.revision == "a" * 40
    # model and processor come from the one commit resolved first, never from two
    assert {call[2] for call in hub.calls if call[0] != "cached_file"} == {"a" * 40}
    # the same weights under another commit (a model-card edit): the same library
    assert latest.spec.key == embedder.spec.key


def test_revision_is_ignored_for_a_local_folder(tiny_model, tiny_embedder, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local folder never asks the hub")

    monkeypatch.setattr("transformers.utils.cached_file", no_hub)
    again = Embedder.load(str(tiny_model), device="cpu", revision="local")
    assert again.spec == tiny_embedder.spec
