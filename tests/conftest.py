"""Shared fixtures: tiny random ViT checkpoints saved to disk, and realistic test photos.

No network: every model is built from a ViTConfig and loaded back through the same code path a
hub id takes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
DATABASE_ENV = "VITDEX_DATABASE_URL"  # what Library.open and every command read
POSTGRES_ENV = "VITDEX_TEST_POSTGRES_URL"  # a server the tests may create databases on
os.environ.pop(DATABASE_ENV, None)  # a developer's own setting never reaches a test

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


# --- the database a library uses: SQLite (in its folder) or PostgreSQL ----------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """An engine on the test server's maintenance database (AUTOCOMMIT, for CREATE DATABASE)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f'no PostgreSQL server for the tests: set {POSTGRES_ENV} (`eval "$(bash .ci/postgres'
            ' start DIR)"` starts one; .ci/run does)'
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


_names = itertools.count()


@pytest.fixture
def postgres_database(postgres_server) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    yield from _fresh_database(postgres_server)


def _fresh_database(server) -> Iterator[str]:
    name = f"vitdex_test_{os.getpid()}_{next(_names)}"
    with server.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
    yield server.url.set(database=name).render_as_string(hide_password=False)
    with server.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, monkeypatch) -> str | None:
    """The test's libraries in SQLite (None) or in a fresh PostgreSQL database (its URL, set as
    $VITDEX_DATABASE_URL, which Library.open, every command and every subprocess read)."""
    if request.param == "sqlite":
        return None
    url = request.getfixturevalue("postgres_database")
    monkeypatch.setenv(DATABASE_ENV, url)
    return url


@pytest.fixture
def another_database(request, database) -> Iterator[str | None]:
    """For a test that makes a second library: None on SQLite (a new folder is a new library),
    else the URL of another fresh PostgreSQL database (pass it as --database)."""
    if database is None:
        yield None
    else:
        yield from _fresh_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def own_database(request, module_database, monkeypatch) -> Iterator[str | None]:
    """In a module on `module_database`: a test that makes a library of its own gets a fresh
    database of its own (None on SQLite, where its new folder is enough)."""
    if module_database is None:
        yield None
        return
    for url in _fresh_database(request.getfixturevalue("postgres_server")):
        monkeypatch.setenv(DATABASE_ENV, url)
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_database(request) -> Iterator[str | None]:
    """`database` for a module whose library is built once (a module-scoped fixture): request
    it in that fixture, and mark the module's tests with it."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    with pytest.MonkeyPatch.context() as patch:
        for url in _fresh_database(server):
            patch.setenv(DATABASE_ENV, url)
            yield url
