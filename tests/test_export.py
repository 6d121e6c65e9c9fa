"""vitdex export: the files read back with pyarrow and numpy hold exactly the vectors search uses,
with each image's facts, in both layouts, streamed in pages."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.photos import make_photo
from tests.test_ingest import _exif, ingest, run
from vitdex.library import Library
from vitdex.library.export import export
from vitdex.storage import canonical

DIM = 32  # the tiny model's hidden size


@pytest.fixture(scope="module")
def library(tiny_model, tmp_path_factory):
    """13 images: 7 photos (one with an EXIF date, one copied under a name that is not UTF-8)
    and 5 in an album folder."""
    root = tmp_path_factory.mktemp("export")
    photos = root / "photos"
    for seed in range(6):
        make_photo(photos / f"p{seed}.jpg", size=(80 + seed, 60), seed=seed)
    make_photo(photos / "dated.jpg", seed=6, exif=_exif("Acme", "Snap", "2021:06:01 10:20:30"))
    shutil.copy(photos / "p1.jpg", os.fsencode(photos) + b"/caf\xe9.jpg")
    for seed in range(7, 12):
        make_photo(photos / "album" / f"a{seed}.png", seed=seed)
    lib = root / "lib"
    assert ingest(lib, photos, model=tiny_model)["added"] == 13
    return lib, photos


def stored(lib: Path, feature: str, under: Path | None = None):
    """(image ids, vectors) as search reads them, and the images by id."""
    with Library.open(lib) as library:
        folder = None if under is None else canonical(under)
        ids, vectors = library.store.vectors.of_images(
            library.require_spec(), feature, under=folder
        )
        images = library.store.images.by_ids(ids)
    return ids, vectors, [images[int(i)] for i in ids]


def vectors_of(table: pa.Table, feature: str) -> np.ndarray:
    return np.stack(table.column(feature).to_numpy(zero_copy_only=False)).astype(np.float32)


def npy_rows(out: Path, feature: str) -> np.ndarray:
    shards = sorted((out / feature).iterdir())  # sorted names: the order autofaiss reads
    return np.concatenate([np.load(p) for p in shards]) if shards else np.empty((0, DIM))


def metadata_rows(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((out / "metadata").iterdir()))


def test_parquet_holds_the_stored_vectors_and_facts_in_id_order(library, tmp_path):
    lib, photos = library
    out = tmp_path / "all.parquet"
    report = run("export", out, "--library", lib, "--json")
    assert report["rows"] == 13 and report["features"] == ["cls", "mean"]
    assert report["files"] == [str(out)] and report["format"] == "parquet"
    table = pq.read_table(out)
    assert table.column_names == [
        "path", "sha256", "width", "height", "format", "taken_at", "cls", "mean"
    ]  # fmt: skip
    assert table.schema.field("cls").type == pa.list_(pa.float32(), DIM)
    for feature in ("cls", "mean"):
        ids, vectors, images = stored(lib, feature)
        exported = vectors_of(table, feature)
        np.testing.assert_array_equal(exported, vectors)  # bit for bit what search uses
        np.testing.assert_allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [i.path.encode(errors="surrogateescape").decode(
        "utf-8", "replace") for i in images]  # fmt: skip
    assert [(r["sha256"], r["width"], r["height"], r["format"]) for r in rows] == [
        (i.sha256, i.width, i.height, i.format) for i in images
    ]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["dated.jpg"]["taken_at"].startswith("2021-06-01T10:20:30")
    assert (by_name["p3.jpg"]["width"], by_name["p3.jpg"]["height"]) == (83, 60)
    # a name that is not UTF-8 is text with U+FFFD; it holds the same content as its original
    assert by_name["caf\ufffd.jpg"]["sha256"] == by_name["p1.jpg"]["sha256"]


def test_parquet_streams_one_row_group_per_page(library, tmp_path):
    lib, _ = library
    with Library.open(lib) as opened:
        report = export(opened, tmp_path / "paged.parquet", page=5)
    file = pq.ParquetFile(tmp_path / "paged.parquet")
    assert report.rows == 13 and file.num_row_groups == 3  # 5 + 5 + 3
    assert [file.metadata.row_group(i).num_rows for i in range(3)] == [5, 5, 3]
    _, vectors, _ = stored(lib, "cls")
    np.testing.assert_array_equal(vectors_of(file.read(), "cls"), vectors)


def test_npy_is_clip_retrievals_layout_with_shards_across_pages(library, tmp_path):
    lib, _ = library
    out = tmp_path / "emb"
    with Library.open(lib) as opened:  # pages of 4 straddle shards of 5
        report = export(opened, out, format="npy", page=4, shard_rows=5)
    assert sorted(p.name for p in out.iterdir()) == ["cls", "mean", "metadata"]
    names = [f"emb_{n:04d}.npy" for n in range(3)]
    assert sorted(p.name for p in (out / "cls").iterdir()) == names
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [
        f"metadata_{n:04d}.parquet" for n in range(3)
    ]
    assert [np.load(out / "cls" / n, mmap_mode="r").shape for n in names] == [
        (5, DIM), (5, DIM), (3, DIM)
    ]  # fmt: skip
    assert report.files[:3] == [str(out / "cls" / names[0]), str(out / "mean" / names[0]),
                                str(out / "metadata" / "metadata_0000.parquet")]  # fmt: skip
    metadata = metadata_rows(out)
    assert metadata.column_names == [
        "image_path", "sha256", "width", "height", "format", "taken_at"
    ]  # fmt: skip
    for feature in ("cls", "mean"):
        _, vectors, images = stored(lib, feature)
        exported = npy_rows(out, feature)
        assert exported.dtype == np.float32
        np.testing.assert_array_equal(exported, vectors)
        assert metadata.column("sha256").to_pylist() == [i.sha256 for i in images]


def test_npy_from_the_cli_under_a_folder_with_one_feature(library, tmp_path):
    lib, photos = library
    out = tmp_path / "album-emb"
    out.mkdir()  # an empty folder is a fine target
    report = run("export", out, "--library", lib, "--format", "npy", "--feature", "mean",
                 "--under", photos / "album", "--json")  # fmt: skip
    assert report["rows"] == 5 and report["features"] == ["mean"]
    assert report["files"] == [str(out / "mean" / "emb_0000.npy"),
                               str(out / "metadata" / "metadata_0000.parquet")]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["mean", "metadata"]
    _, vectors, images = stored(lib, "mean", under=photos / "album")
    np.testing.assert_array_equal(npy_rows(out, "mean"), vectors)
    paths = metadata_rows(out).column("image_path").to_pylist()
    assert paths == [i.path for i in images] and len(paths) == 5
    assert all(p.startswith(str(photos / "album") + "/") for p in paths)


def test_repeated_feature_option_orders_the_columns(library, tmp_path):
    lib, photos = library
    out = tmp_path / "two.parquet"
    text = run("export", out, "--library", lib, "--feature", "mean", "--feature", "cls",
               "--feature", "mean", "--under", photos / "album")  # fmt: skip
    assert f"exported 5 images (mean, cls) to {out}: 1 file" in text
    table = pq.read_table(out)
    assert table.column_names[-2:] == ["mean", "cls"] and table.num_rows == 5
    _, vectors, _ = stored(lib, "cls", under=photos / "album")
    np.testing.assert_array_equal(vectors_of(table, "cls"), vectors)


def test_an_unknown_feature_is_one_line_naming_the_stored_ones(library, tmp_path):
    lib, _ = library
    out = tmp_path / "nope.parquet"
    text = run("export", out, "--library", lib, "--feature", "nope", expect=1)
    assert text.strip() == "Error: unknown feature 'nope'; this library stores cls, mean"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_and_left_alone(library, tmp_path):
    lib, _ = library
    out = tmp_path / "taken.parquet"
    out.write_text("mine")
    text = run("export", out, "--library", lib, expect=1)
    assert text.strip() == f"Error: {out} already exists: remove it or choose another output path"
    assert out.read_text() == "mine"


def test_an_empty_library_or_none_says_so_in_one_line(tmp_path):
    out, lib = tmp_path / "x.parquet", tmp_path / "lib"
    text = run("export", out, "--library", lib, expect=1)
    assert text.strip() == f"Error: no vitdex library at {lib} (run `vitdex ingest` to create one)"
    Library.open(lib, create=True).close()  # a library that never ingested anything
    text = run("export", out, "--library", lib, expect=1)
    assert text.strip() == f"Error: library {lib} is empty: run `vitdex ingest PATH` first"
    assert not out.exists()


def test_no_matching_images_gives_valid_empty_files(library, tmp_path):
    lib, photos = library
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    out = tmp_path / "empty.parquet"
    assert run("export", out, "--library", lib, "--under", empty, "--json")["rows"] == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.field("mean").type == pa.list_(pa.float32(), DIM)
    npy = tmp_path / "empty-npy"
    report = run("export", npy, "--library", lib, "--under", empty, "--format", "npy", "--json")
    assert report["rows"] == 0 and report["files"] == []
    assert sorted(p.name for p in npy.iterdir()) == ["cls", "mean", "metadata"]


def test_a_failed_export_leaves_nothing_behind(library, tmp_path, monkeypatch):
    import vitdex.library.export as module

    lib, _ = library
    calls = []

    def fail_on_second_page(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return table(*args, **kwargs)

    table = module._table
    monkeypatch.setattr(module, "_table", fail_on_second_page)
    for fmt, name in (("parquet", "x.parquet"), ("npy", "x")):
        calls.clear()
        with Library.open(lib) as opened, pytest.raises(OSError, match="disk full"):
            export(opened, tmp_path / name, format=fmt, page=5)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary file


def test_without_pyarrow_the_command_says_how_to_install_it(library, tmp_path, monkeypatch):
    lib, _ = library
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    text = run("export", tmp_path / "x.parquet", "--library", lib, expect=1)
    assert text.strip() == "Error: vitdex export needs pyarrow: pip install 'vitdex[export]'"
