"""search, status and the index commands, through the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.photos import make_photo
from tests.test_ingest import image_rows, index_ids, ingest, run
from vitdex.library import Library

pytestmark = pytest.mark.usefixtures("database")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def library(tiny_model, tmp_path):
    """A library of 12 photos, 5 of them in an album folder."""
    photos = tmp_path / "photos"
    for seed in range(7):
        make_photo(photos / f"p{seed}.jpg", seed=seed)
    for seed in range(7, 12):
        make_photo(photos / "album" / f"a{seed}.jpg", seed=seed)
    lib = tmp_path / "lib"
    ingest(lib, photos, model=tiny_model)
    return lib, photos


def exact_ranking(lib, query_path, feature="cls"):
    with Library.open(lib) as library:
        ids, vectors = library.store.vectors.of_images(library.require_spec(), feature)
    rows = image_rows(lib)
    query_id = rows[str(query_path)][0]
    scores = vectors @ vectors[list(ids).index(query_id)]
    order = [int(ids[i]) for i in np.argsort(-scores) if ids[i] != query_id]
    return order, dict(zip(ids.tolist(), scores.tolist(), strict=True))


@pytest.mark.parametrize("feature", ["cls", "mean"])
def test_search_uses_stored_vector_and_leaves_the_query_out(library, feature):
    lib, photos = library
    query = photos / "p3.jpg"
    result = run("search", query, "--library", lib, "--feature", feature, "-k", "5", "--json")
    assert result["query"] == str(query) and result["feature"] == feature and result["in_library"]
    paths = [hit["path"] for hit in result["results"]]
    assert str(query) not in paths and len(paths) == 5
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True)
    order, exact = exact_ranking(lib, query, feature)
    ids = {path: i for path, (i, _) in image_rows(lib).items()}
    assert [ids[p] for p in paths] == order[:5]
    assert scores == pytest.approx([exact[ids[p]] for p in paths], abs=1e-5)


def test_search_embeds_an_outside_image_on_the_fly(library, tmp_path):
    lib, photos = library
    outside = tmp_path / "elsewhere" / "copy.jpg"
    outside.parent.mkdir()
    outside.write_bytes((photos / "p2.jpg").read_bytes())
    result = run("search", outside, "--library", lib, "-k", "3", "--json")
    assert not result["in_library"]
    top = result["results"][0]
    assert top["path"] == str(photos / "p2.jpg") and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_under_folder_returns_k_from_that_folder(library):
    lib, photos = library
    result = run(
        "search",
        photos / "p0.jpg",
        "--library",
        lib,
        "--under",
        photos / "album",
        "-k",
        "5",
        "--json",
    )
    paths = [hit["path"] for hit in result["results"]]
    assert len(paths) == 5 and all(p.startswith(str(photos / "album") + "/") for p in paths)
    # the query inside the folder is left out and the other 4 come back
    inside = run(
        "search",
        photos / "album" / "a7.jpg",
        "--library",
        lib,
        "--under",
        photos / "album",
        "-k",
        "10",
        "--json",
    )
    assert len(inside["results"]) == 4


def test_min_score_and_table_output(library):
    lib, photos = library
    full = run("search", photos / "p0.jpg", "--library", lib, "-k", "11", "--json")
    cut = full["results"][4]["score"]
    result = run(
        "search", photos / "p0.jpg", "--library", lib, "-k", "11", "--min-score", cut, "--json"
    )
    assert len(result["results"]) == 5 and min(h["score"] for h in result["results"]) >= cut
    table = run("search", photos / "p0.jpg", "--library", lib, "-k", "2")
    lines = table.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[1] == full["results"][0]["path"]


def test_search_errors(library, tmp_path, another_database):
    lib, photos = library
    assert "no such image" in run("search", tmp_path / "missing.jpg", "--library", lib, expect=1)
    out = run("search", photos / "p0.jpg", "--library", lib, "--feature", "pooler", expect=1)
    assert "no trained pooler" in out
    empty = ("--database", another_database) if another_database else ()
    assert "no vitdex library" in run(
        "search", photos / "p0.jpg", "--library", tmp_path / "x", *empty, expect=1
    )
    assert run("search", photos / "p0.jpg", "--library", lib, "-k", "0", expect=2)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    assert "bad.jpg" in run("search", bad, "--library", lib, expect=1)


def test_status_reports_counts_spec_index_and_failures(library):
    lib, photos = library
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ingest(lib, photos)
    data = run("status", "--library", lib, "--json")
    assert data["images"] == 12 and data["features"] == ["cls", "mean"]
    assert data["model"] == data["spec"]["model_id"] and data["spec"]["dim"] == 32
    assert data["index"]["cls"]["kind"] == "flat" and data["index"]["cls"]["vectors"] == 12
    assert data["index"]["cls"]["bytes"] > 12 * 32 * 4 and data["index"]["cls"]["up_to_date"]
    assert [f["path"] for f in data["failed"]] == [str(photos / "broken.jpg")]
    lines = run("status", "--library", lib).splitlines()
    assert "images    12 (12 distinct contents)" in lines
    assert any(line.startswith("index     cls: flat, 12 vectors, ") for line in lines)
    assert "failed    1" in lines
    assert any(line.startswith(f"  {photos / 'broken.jpg'}: ") for line in lines)


def exact_recall(lib, k: int) -> float:
    """recall@k of the library's cls index over all its vectors, against numpy exact search."""
    with Library.open(lib) as library:
        ids, vectors = library.store.vectors.of_images(library.require_spec(), "cls")
        _, found = library.index("cls").search(vectors, k)
    exact = ids[np.argsort(-(vectors @ vectors.T), axis=1, kind="stable")[:, :k]]
    return float(
        np.mean([len(np.intersect1d(e, f)) / k for e, f in zip(exact, found, strict=True)])
    )


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfsq8"])
def test_index_rebuild_and_eval(library, kind):
    lib, photos = library
    built = run("index", "rebuild", "--library", lib, "--type", kind, "--json")
    assert built["kind"] == kind and built["vectors"] == 12
    evaluated = run("index", "eval", "--library", lib, "--sample", "12", "--json")
    assert evaluated["kind"] == kind
    # eval agrees with numpy exact search; at 12 vectors every kind finds the true neighbours
    # (one IVF list, an HNSW graph that reaches every node)
    assert evaluated["recall"] == pytest.approx(exact_recall(lib, k=10)) == 1.0
    # the chosen type is remembered by the next ingest
    make_photo(photos / "new.jpg", seed=40)
    ingest(lib, photos)
    assert run("status", "--library", lib, "--json")["index"]["cls"]["kind"] == kind


def test_missing_or_corrupt_index_file_is_rebuilt_from_sqlite(library):
    lib, photos = library
    with Library.open(lib) as library_:
        (file,) = library_.indexes.files("cls")
        path = file.path
    path.write_bytes(b"not an index")
    result = run("search", photos / "p1.jpg", "--library", lib, "--json")
    assert len(result["results"]) == 10
    path.unlink(missing_ok=True)
    for stale in path.parent.glob("cls.*"):
        stale.unlink()
    assert len(run("search", photos / "p1.jpg", "--library", lib, "--json")["results"]) == 10
    assert index_ids(lib) == sorted(i for i, _ in image_rows(lib).values())


def test_pooler_only_with_trained_pooler_weights(
    tiny_model, tiny_model_with_pooler, photo_dir, tmp_path, another_database, monkeypatch
):
    refused = run(
        "ingest",
        photo_dir,
        "--library",
        tmp_path / "a",
        "--model",
        tiny_model,
        "--feature",
        "pooler",
        expect=1,
    )
    assert "no trained pooler" in refused
    lib = tmp_path / "b"
    if another_database:
        monkeypatch.setenv("VITDEX_DATABASE_URL", another_database)
    ingest(lib, photo_dir, model=tiny_model_with_pooler, extra=("--feature", "pooler"))
    assert run("status", "--library", lib, "--json")["features"] == ["cls", "mean", "pooler"]
    by_feature = {
        feature: run(
            "search", photo_dir / "photo0.jpg", "--library", lib, "--feature", feature, "--json"
        )["results"]
        for feature in ("cls", "pooler")
    }
    assert len(by_feature["pooler"]) == 3
    assert [h["score"] for h in by_feature["pooler"]] != [h["score"] for h in by_feature["cls"]]


def test_status_reads_only_index_headers_and_survives_a_corrupt_file(library):
    lib, photos = library
    code = (
        "import sys\n"
        "from vitdex.library import Library\n"
        f"data = Library.open({str(lib)!r}).status()\n"
        "assert data['index']['cls']['vectors'] == 12, data\n"
        "assert 'faiss' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with Library.open(lib) as library_:
        (file,) = library_.indexes.files("cls")
        path = file.path
    path.write_bytes(b"not an index")
    data = run("status", "--library", lib, "--json")
    assert "corrupt" in data["index"]["cls"]["error"]
    assert "corrupt" in run("status", "--library", lib)
