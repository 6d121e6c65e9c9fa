"""A folder given as --model that is not a model: name what is missing, not transformers' words."""

from __future__ import annotations

import shutil

import pytest

from vitdex.embedder import Embedder, ModelLoadError


@pytest.mark.parametrize(
    ("remove", "missing"),
    [
        (["config.json"], "config.json"),
        (["model.safetensors"], "weights (model.safetensors or pytorch_model.bin)"),
        (["preprocessor_config.json"], "preprocessor_config.json"),
        (
            ["config.json", "model.safetensors", "preprocessor_config.json"],
            "config.json, weights (model.safetensors or pytorch_model.bin),"
            " preprocessor_config.json",
        ),
    ],
)
def test_folder_that_is_not_a_model_names_what_is_missing(tmp_path, tiny_model, remove, missing):
    folder = tmp_path / "not-a-model"
    shutil.copytree(tiny_model, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(ModelLoadError) as caught:
        Embedder.load(str(folder), device="cpu")
    assert str(caught.value) == f"model folder {folder} is not a model: missing {missing}"


def test_sharded_folder_is_a_model(tmp_path, tiny_model):
    """A folder with an index of shards has weights, even without model.safetensors."""
    from vitdex.embedder.model import _missing_model_files

    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"x": "model-00001-of-00001.safetensors"}}'
    )
    assert _missing_model_files(folder) == []


def test_unreadable_shard_index_counts_as_missing_weights(tmp_path, tiny_model):
    folder = tmp_path / "bad-index"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"is not a model: missing weights \("):
        Embedder.load(str(folder), device="cpu")
