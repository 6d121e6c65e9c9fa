"""Shared fixtures: tiny random ViT checkpoints saved to disk, and realistic test photos.

No network: every model is built from a ViTConfig and loaded back through the same code path a
hub id takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.photos import make_photo  # noqa: E402

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=3,
)


def save_tiny_vit(folder: Path, *, with_pooler: bool = False, seed: int = 0) -> Path:
    """Save a tiny random ViT like google/vit-base-patch16-224 (a classifier, no pooler) or,
    with_pooler=True, a ViTModel that does carry pooler weights."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(**TINY)
    model = (
        ViTModel(config, add_pooling_layer=True)
        if with_pooler
        else ViTForImageClassification(config)
    )
    model.eval()
    model.save_pretrained(folder)
    ViTImageProcessorPil(
        size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A classifier checkpoint without trained pooler, like the default model."""
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_model_with_pooler(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit-pooler"), with_pooler=True, seed=1)


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """A folder of three distinct small JPEG photos and one PNG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        make_photo(folder / f"photo{seed}.jpg", size=(320, 240), seed=seed)
    make_photo(folder / "drawing.png", size=(200, 200), seed=7)
    return folder


@pytest.fixture(scope="session")
def big_photo(tmp_path_factory) -> Path:
    """A 12-megapixel (4000x3000) camera-sized JPEG, written once per session."""
    return make_photo(tmp_path_factory.mktemp("big") / "big.jpg", size=(4000, 3000), seed=12)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model):
    """The vitdex Embedder on the tiny classifier checkpoint, on CPU."""
    from vitdex.embedder import Embedder

    return Embedder.load(str(tiny_model), device="cpu")
