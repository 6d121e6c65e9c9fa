"""The checkpoint's own labels: its classification head's top labels, stored at ingest from the
features' forward, listed (`labels`, `tags`), searched (`search --tag`) and shown in the gallery.

The reference is transformers' own ViTForImageClassification softmax on the same checkpoint, fed
by its own image processor.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from starlette.testclient import TestClient

from tests.conftest import TINY
from tests.photos import make_photo
from tests.test_migration import pre_alembic_schema
from vitdex.cli.main import main
from vitdex.embedder import Embedder
from vitdex.library import Library
from vitdex.storage.database import SCHEMA_VERSION
from vitdex.web import create_app

NAMES = ["tabby, tabby cat", "Golden Retriever", "espresso"]
TOLERANCE = 1e-3


def save_labelled_vit(folder: Path) -> Path:
    """A tiny ViTForImageClassification with real label names; its classifier is scaled up so
    the photos get distinct, confident top labels."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(
        **TINY, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)}
    )
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    model.save_pretrained(folder)
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2
    ).save_pretrained(folder)
    return folder


def reference(model: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """path -> softmax over NAMES, as transformers computes it."""
    import torch
    from transformers import AutoImageProcessor, ViTForImageClassification

    processor = AutoImageProcessor.from_pretrained(model)
    net = ViTForImageClassification.from_pretrained(model).eval()
    out = {}
    for path in paths:
        with Image.open(path) as image:
            pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out[str(path)] = torch.softmax(net(pixel_values=pixels).logits, -1)[0].numpy()
    return out


def run(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_labelled_vit(tmp_path_factory.mktemp("labelled-vit"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight PNG photos (no JPEG draft decoding: the reference decodes at full size) and an
    identical copy of the first."""
    folder = tmp_path_factory.mktemp("label-photos")
    for seed in range(8):
        make_photo(folder / f"p{seed}.png", (96, 64), seed=seed)
    shutil.copyfile(folder / "p0.png", folder / "copy.png")
    return folder


@pytest.fixture(scope="module")
def expected(model, photos) -> dict[str, np.ndarray]:
    probs = reference(model, sorted(photos.iterdir()))
    assert len({int(p.argmax()) for p in probs.values()}) >= 2, "the photos need distinct tags"
    return probs


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model, photos) -> Path:
    folder = tmp_path_factory.mktemp("label-lib") / "lib"
    run("ingest", photos, "--library", folder, "--model", model)
    return folder


def top_name(probs: np.ndarray) -> str:
    return NAMES[int(probs.argmax())]


def tagged(expected: dict[str, np.ndarray], name: str) -> list[str]:
    """The paths whose reference top label is `name`."""
    return [p for p, probs in expected.items() if top_name(probs) == name]


def test_stored_labels_match_transformers_softmax(lib, expected, monkeypatch):
    with Library.open(lib) as library:
        monkeypatch.setattr(library, "embedder", lambda *a, **k: pytest.fail("not stored"))
        found = library.labels(list(expected), top=5)  # 5 > 3 labels: all 3
    for item in found:
        probs = expected[item.path]
        assert [x.label for x in item.top][0] == top_name(probs)
        assert len(item.top) == len(NAMES) and item.error is None
        for x in item.top:
            assert abs(x.score - probs[NAMES.index(x.label)]) < TOLERANCE
        assert [x.score for x in item.top] == sorted((x.score for x in item.top), reverse=True)


def test_labels_are_per_content_and_come_from_the_features_forward(lib, model, photos):
    with Library.open(lib) as library:
        spec = library.require_spec()
        assert library.store.labels.count(spec) == library.store.images.count_contents() == 8
        pair = library.labels([photos / "p0.png", photos / "copy.png"])
        by_path = {item.path: item.top for item in pair}
    assert by_path[str(photos / "p0.png")] == by_path[str(photos / "copy.png")]

    embedder = Embedder.load(str(model), device="cpu")
    calls = []
    embedder.model.register_forward_hook(lambda *_: calls.append(1))
    results = list(embedder.embed_files(sorted(photos.glob("p*.png")), batch_size=8, top=2))
    assert len(calls) == 1  # one batch, one forward: vectors and labels together
    assert all(r.vectors and len(r.labels) == 2 for r in results)


def test_labels_command_prints_stored_and_new_images_and_reports_a_bad_file(
    lib, model, expected, photos, tmp_path
):
    outside = make_photo(tmp_path / "new.png", (96, 64), seed=40)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    theirs = reference(model, [outside])[str(outside)]
    result = run("labels", photos / "p1.png", bad, outside, "--library", lib, "--top", "2",
                 "--json", expect=1)  # fmt: skip
    data = json.loads(result.stdout)
    assert [entry["path"] for entry in data["labels"]] == [str(photos / "p1.png"), str(outside)]
    first, new = data["labels"]
    assert len(first["top"]) == len(new["top"]) == 2
    assert first["top"][0]["label"] == top_name(expected[str(photos / "p1.png")])
    assert new["top"][0]["label"] == top_name(theirs)
    assert abs(new["top"][0]["score"] - theirs.max()) < TOLERANCE
    assert [e["path"] for e in data["errors"]] == [str(bad)]
    assert f"{bad}: " in result.stderr and "Traceback" not in result.output

    text = run("labels", photos / "p1.png", "--library", lib).stdout.splitlines()
    assert text[0] == str(photos / "p1.png") and len(text) == 1 + len(NAMES)
    assert text[1].split(maxsplit=1)[1] == top_name(expected[str(photos / "p1.png")])


def test_search_by_tag_alone_lists_the_tagged_images_best_first(lib, expected):
    name = top_name(expected[str(sorted(expected)[0])])
    want = tagged(expected, name)
    result = run("search", "--tag", name.upper(), "-k", 50, "--library", lib, "--json")
    data = json.loads(result.stdout)
    assert sorted(hit["path"] for hit in data["results"]) == sorted(want)
    scores = [hit["score"] for hit in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(abs(h["score"] - expected[h["path"]].max()) < TOLERANCE for h in data["results"])
    one = run("search", "--tag", name, "-k", 1, "--library", lib, "--paths-only").stdout
    assert one.splitlines() == [data["results"][0]["path"]]
    none = run("search", "--tag", "no such label", "--library", lib)
    assert none.stdout == "" and "no results with the tag" in none.stderr


def test_search_with_image_and_tag_filters_inside_faiss(lib, expected, photos):
    query = str(photos / "p2.png")
    for name in {top_name(p) for p in expected.values()}:
        want = set(tagged(expected, name)) - {query}
        data = json.loads(run("search", query, "--tag", name, "-k", 50, "--library", lib,
                              "--json").stdout)  # fmt: skip
        assert {hit["path"] for hit in data["results"]} == want
        k = json.loads(run("search", query, "--tag", name, "-k", 1, "--library", lib,
                           "--json").stdout)  # fmt: skip
        assert len(k["results"]) == min(1, len(want))  # k filled from the tagged ones only


def test_search_needs_an_image_or_a_tag(lib):
    result = run("search", "--library", lib, expect=2)
    assert "give an IMAGE, a --tag LABEL, or both" in result.output


def test_tags_lists_top_labels_with_image_counts(lib, expected):
    data = json.loads(run("tags", "--library", lib, "--json").stdout)
    counts: dict[str, int] = {}
    for probs in expected.values():
        counts[top_name(probs)] = counts.get(top_name(probs), 0) + 1
    assert {t["label"]: t["count"] for t in data["tags"]} == counts
    assert [t["count"] for t in data["tags"]] == sorted(counts.values(), reverse=True)


def test_gallery_shows_labels_and_filters_by_tag(lib, expected, photos):
    name = top_name(expected[str(photos / "p3.png")])
    with Library.open(lib) as library, TestClient(create_app(library)) as client:
        ids = {Path(i.path).name: i.id for i in library.store.images.under()}
        home = client.get("/")
        assert f'<option value="{name}"' in home.text
        page = client.get("/", params={"tag": name.lower()})
        shown = {int(i) for i in re.findall(r'<img src="/thumb/(\d+)\?v=', page.text)}
        assert shown == {ids[Path(p).name] for p in tagged(expected, name)}
        detail = client.get(f"/image/{ids['p3.png']}").text
        assert "<dt>Labels</dt>" in detail and name in detail


def test_int8_runtime_labels_follow_the_fp32_head(model, photos, tmp_path):
    pytest.importorskip("onnxruntime", reason="the int8 runtime needs vitdex[fast]")
    paths = sorted(photos.glob("p*.png"))
    fp32 = list(Embedder.load(str(model), device="cpu").embed_files(paths))
    int8 = list(
        Embedder.load(str(model), device="cpu", runtime="int8", cache_dir=tmp_path).embed_files(
            paths
        )
    )
    for a, b in zip(fp32, int8, strict=True):
        assert [x.label for x in b.labels] and len(b.labels) == len(NAMES)
        ours = {x.label: x.score for x in b.labels}
        assert all(abs(ours[x.label] - x.score) < 0.05 for x in a.labels)


def test_a_checkpoint_without_a_head_has_no_labels_and_nothing_breaks(
    tiny_model_with_pooler, photos, tmp_path
):
    lib = tmp_path / "lib"
    run("ingest", photos, "--library", lib, "--model", tiny_model_with_pooler)
    with Library.open(lib) as library:
        assert library.store.labels.count(library.require_spec()) == 0
        assert library.tags() == []
    result = run("labels", photos / "p0.png", "--library", lib, expect=1)
    assert "no labels: the model has no classification head" in result.output
    tags = run("tags", "--library", lib)
    assert tags.stdout == "" and "no labels stored" in tags.stderr
    assert run("search", photos / "p0.png", "--library", lib, "--paths-only").stdout
    assert run("search", "--tag", "espresso", "--library", lib).stdout == ""
    with Library.open(lib) as library, TestClient(create_app(library)) as client:
        home = client.get("/")
        assert home.status_code == 200 and 'name="tag"' not in home.text
        image = next(iter(library.store.images.under()))
        detail = client.get(f"/image/{image.id}")
        assert detail.status_code == 200 and "<dt>Labels</dt>" not in detail.text


def test_a_schema_2_library_gains_the_labels_table(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    pre_alembic_schema(folder / "vitdex.sqlite", 2)  # as vitdex wrote schema 2
    with Library.open(folder) as library:
        assert library.tags() == []
    with sqlite3.connect(folder / "vitdex.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"labels", "ix_labels_key"} <= names
