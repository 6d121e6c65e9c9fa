"""An index that outgrows RAM (issue 12): IVF indexes built on disk from pages of the store,
in bounded memory, are the very index the in-memory build makes, and the index manager loads,
catches up, detects staleness and cleans them as it does any index file."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from vitdex.index import VectorIndex, read_sidecar
from vitdex.index import ondisk as ondisk_mod
from vitdex.index import vector_index as vi
from vitdex.index.evaluate import recall_at_k, recall_at_k_paged
from vitdex.index.graph import knn_graph, knn_graph_paged
from vitdex.index.ondisk import PagedVectors, build_ivf_on_disk

DIM = 32


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Normalised vectors around 40 centres, so IVF lists are uneven as with real embeddings."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((40, dim)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Source:
    """A PagedVectors over arrays that records what the build asked for."""

    def __init__(self, ids: np.ndarray, x: np.ndarray, page: int):
        self.ids, self.x, self.page = ids, x, page
        self.page_sizes: list[int] = []
        self.row_requests: list[int] = []

    def pages(self):
        for start in range(0, len(self.ids), self.page):
            self.page_sizes.append(len(self.ids[start : start + self.page]))
            yield self.ids[start : start + self.page], self.x[start : start + self.page]

    def rows(self, positions: np.ndarray):
        self.row_requests.append(len(positions))
        return self.ids[positions], self.x[positions]

    def paged(self) -> PagedVectors:
        return PagedVectors(len(self.ids), self.x.shape[1], self.pages, self.rows)


def faiss_bytes(path: Path) -> bytes:
    return path.read_bytes()[:-16]  # without vitdex's end tag (a random token)


@pytest.mark.parametrize(
    ("kind", "n", "params"),
    [("ivfsq8", 4000, {"nlist": 16}), ("ivfsq8", 3000, {"nlist": 64}),
     ("ivfpq", 10_000, {"nlist": 8, "m": 4})],
)  # fmt: skip
def test_the_ondisk_build_is_the_in_memory_index(tmp_path, kind, n, params):
    x = clustered(n, seed=1)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    if params["nlist"] == 64:  # fewer than half the lists filled: FAISS's sparse layout
        rng = np.random.default_rng(5)
        e = np.zeros(DIM, np.float32)
        e[0] = 1
        x = e + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        near, far = (
            e + 0.5 * rng.standard_normal((8, DIM)),
            -e + 0.1 * rng.standard_normal((56, DIM)),
        )
        params = {**params, "centroids": np.vstack([near, far]).astype(np.float32)}
    memory = 3 * 250 * DIM * 4 + 2 * 400 * (DIM + 8)  # shards of about 400 codes
    source = Source(ids, x, page=250)
    on_disk = build_ivf_on_disk(source.paged(), kind, tmp_path / "work", memory=memory, page=250,
                                **params)  # fmt: skip
    in_memory = VectorIndex.build(ids, x, kind, **params)
    assert on_disk.mapped and on_disk.params == in_memory.params
    on_disk.save(tmp_path / "a.faiss")
    in_memory.save(tmp_path / "b.faiss")
    assert faiss_bytes(tmp_path / "a.faiss") == faiss_bytes(tmp_path / "b.faiss")
    queries = clustered(50, seed=2)
    for a, b in zip(on_disk.search(queries, 10), in_memory.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list((tmp_path / "work").iterdir()) == []  # shards and the merged file are gone


def test_the_ondisk_build_holds_one_page_and_bounded_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(vi, "TRAIN_MIN_SAMPLE", 600)  # so the sample is smaller than N
    shards: list[int] = []
    real_write = ondisk_mod._write_shard

    def record(shard, *args):
        shards.append(shard.ntotal)
        return real_write(shard, *args)

    monkeypatch.setattr(ondisk_mod, "_write_shard", record)
    n, page = 5000, 300
    source = Source(np.arange(n, dtype=np.int64), clustered(n, seed=3), page=page)
    memory = 3 * page * DIM * 4 + 2 * 700 * (DIM + 8)  # shards of at most 700 codes
    index = build_ivf_on_disk(source.paged(), "ivfsq8", tmp_path, memory=memory, page=page,
                              nlist=8)  # fmt: skip
    assert index.ntotal == n and sum(shards) == n
    assert max(source.page_sizes) <= page
    assert len(shards) > 1 and max(shards) < 700 + page
    assert source.row_requests == [max(40 * 8, 600), vi.CALIBRATION_QUERIES]  # sample, queries


def test_pages_out_of_order_are_refused(tmp_path):
    x = clustered(2000, seed=4)
    source = Source(np.arange(2000, dtype=np.int64)[::-1].copy(), x, page=500)
    with pytest.raises(vi.IndexInputError, match="ascending"):
        build_ivf_on_disk(source.paged(), "ivfsq8", tmp_path, page=500, nlist=4)


def test_recall_and_the_graph_streamed_in_pages_match_the_in_memory_ones():
    n = 3000
    x = clustered(n, seed=6)
    x[1000:1010] = x[:10] + 0.001  # near duplicates
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) + 1
    index = VectorIndex.build(ids, x, "ivfsq8", nlist=8)
    source = Source(ids, x, page=400)
    rows = np.sort(np.random.default_rng(0).choice(n, 300, replace=False))
    paged = recall_at_k_paged(index, x[rows], source.pages(), k=10)
    assert paged == pytest.approx(recall_at_k(index, x, ids, sample=300, k=10), abs=1e-9)

    threshold = 0.99
    expected = knn_graph(index, x, ids, 8, threshold)
    asked: list[int] = []

    def vectors_of(wanted):
        asked.append(len(wanted))
        return ids[wanted - 1], x[wanted - 1]

    got = knn_graph_paged(index, source.pages(), ids, 8, threshold, vectors_of)
    for a, b in zip(got[:2], expected[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got[2], expected[2], atol=1e-6)
    assert len(expected[0]) >= 10 and asked[0] < n // 10  # only candidates are read back


# --- the store's paged reader and the index manager ---------------------------------------------
def make_library(folder: Path, n: int, seed: int = 0):
    """A library of n images with DIM-d cls vectors, written through the Store (no model)."""
    from vitdex.embedder import EmbeddingSpec
    from vitdex.storage import Store

    spec = EmbeddingSpec(
        model_id="test/ondisk", revision="test",
        preprocessing={"size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "resample": 2},
        features=("cls",), dim=DIM,
    )  # fmt: skip
    store = Store(folder, create=True)
    stored = store.bind_spec(spec.key, spec.model_id, "test", DIM, spec.to_dict())
    store.close()
    add_images(folder, range(n), seed)
    return stored


def add_images(folder: Path, numbers: range, seed: int, x: np.ndarray | None = None) -> None:
    from vitdex.storage import FileIdentity, NewContent, Store

    store = Store(folder)
    try:
        spec = store.spec()
        x = clustered(len(numbers), seed=seed) if x is None else x
        contents = [NewContent(hashlib.sha256(f"c{i}".encode()).hexdigest(), 8, 8, "JPEG", None,
                               None, None) for i in numbers]  # fmt: skip
        files = [FileIdentity(f"/nowhere/img{i:06d}.jpg", 0, 0, 100 + i, 0) for i in numbers]
        with store.transaction():
            generation = store.bump_generation()
            cids = store.images.add_contents(contents)
            content_ids = [cids[c.sha256] for c in contents]
            store.vectors.add(spec, [(cid, {"cls": x[k]}) for k, cid in enumerate(content_ids)])
            store.images.add(list(zip(files, content_ids, strict=True)), generation,
                             datetime.now(UTC))  # fmt: skip
    finally:
        store.close()


def test_the_store_reads_vectors_in_pages_of_at_most_page_rows(tmp_path):
    from vitdex.library import Library

    make_library(tmp_path / "lib", 1234)
    with Library.open(tmp_path / "lib") as library:
        spec = library.require_spec()
        ids, vectors = library.store.vectors.of_images(spec, "cls")
        pages = list(library.store.vectors.iter_pages(spec, "cls", 100))
        assert [len(p.ids) for p in pages] == [100] * 12 + [34]
        np.testing.assert_array_equal(np.concatenate([p.ids for p in pages]), ids)
        np.testing.assert_array_equal(np.vstack([p.vectors for p in pages]), vectors)
        assert (np.diff(ids) > 0).all() and library.store.vectors.count(spec, "cls") == 1234
        some = ids[[5, 700, 3]]
        got_ids, got = library.store.vectors.of_image_ids(spec, "cls", some)
        np.testing.assert_array_equal(got_ids, np.sort(some))
        np.testing.assert_array_equal(got, vectors[np.searchsorted(ids, np.sort(some))])


def test_the_manager_builds_on_disk_past_its_memory_and_loads_catches_up_and_cleans(
    tmp_path, monkeypatch
):
    from vitdex.library import Library

    lib = tmp_path / "lib"
    make_library(lib, 3000)
    queries = clustered(20, seed=9)
    with Library.open(lib) as library:
        library.indexes.build_memory = 3000 * DIM * 4  # the in-memory build fits: in memory
        in_memory = library.indexes.rebuild("cls", "ivfsq8")
        assert library.indexes.ondisk_builds == 0
        expected = in_memory.search(queries, 10)
    with Library.open(lib) as library:
        library.indexes.build_memory = 3000 * DIM * 4 - 1  # one byte short: on disk
        built = library.indexes.rebuild("cls", "ivfsq8")
        assert library.indexes.ondisk_builds == 1 and built.mapped
        for a, b in zip(built.search(queries, 10), expected, strict=True):
            np.testing.assert_array_equal(a, b)
        [file] = library.indexes.files("cls")
        assert read_sidecar(file.path)["ntotal"] == 3000
        assert sorted(p.name for p in (lib / "index").iterdir()) == [
            file.path.name,
            file.path.name + ".json",
        ]  # no shards, no merged temp file, no build folder
    with Library.open(lib) as library:  # a fresh process: loads the file, mapped
        index = library.index("cls")
        assert library.indexes.builds == 0 and index.mapped
        for a, b in zip(index.search(queries, 10), expected, strict=True):
            np.testing.assert_array_equal(a, b)

    add_images(lib, range(3000, 3100), seed=11)
    with Library.open(lib) as library:
        store = library.store
        gone = store.vectors.image_ids(store.spec(), "cls")[:50]
        with store.transaction():
            store.images.remove(gone.tolist(), store.bump_generation())
        [behind] = library.indexes.files("cls")
        shutil.copytree(lib, tmp_path / "copy")
        in_memory = VectorIndex.load(behind.path)  # what catching up in memory would give
        changes = store.vectors.changes_since(store.spec(), "cls", behind.generation)
        in_memory.remove(np.union1d(changes.removed, changes.ids))
        in_memory.add(changes.ids, changes.vectors)
        # the 100 new vectors fit the build memory, the index does not: caught up on disk,
        # never copied into memory
        library.indexes.build_memory = 100 * DIM * 4
        monkeypatch.setattr(VectorIndex, "_own", lambda self: pytest.fail("copied in memory"))
        index = library.index("cls")
        monkeypatch.undo()
        assert library.indexes.builds == 0 and index.mapped  # caught up, not rebuilt
        assert index.ntotal == 3050
        assert not np.isin(gone, index.ids()).any()
        new_ids = store.vectors.image_ids(store.spec(), "cls")[-100:]
        assert np.isin(new_ids, index.ids()).all()
        for lst in range(index.params["nlist"]):  # the same codes in the same lists
            ids, x = index.list_codes(lst)
            want_ids, want = in_memory.list_codes(lst)
            order, want_order = np.argsort(ids), np.argsort(want_ids)
            np.testing.assert_array_equal(ids[order], want_ids[want_order])
            np.testing.assert_array_equal(x[order], want[want_order])
        for a, b in zip(index.search(queries, 10), in_memory.search(queries, 10), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not [p for p in (lib / "index").iterdir() if p.name.startswith(".catch-up")]
    with Library.open(tmp_path / "copy") as library:  # more changes than the build memory
        library.indexes.build_memory = 100 * DIM * 4 - 1
        assert library.index("cls").ntotal == 3050
        assert library.indexes.builds == library.indexes.ondisk_builds == 1  # rebuilt on disk
        library.indexes.refresh(["cls"])  # a writer saves the caught-up index
        [file] = library.indexes.files("cls")
        assert read_sidecar(file.path)["meta"]["count"] == 3050

    # another database's history: the file is stale there and never answers
    other = tmp_path / "other"
    make_library(other, 3000, seed=0)
    (other / "index").mkdir()
    for suffix in ("", ".json"):
        os.link(file.path.with_name(file.path.name + suffix),
                other / "index" / (file.path.name + suffix))  # fmt: skip
    with Library.open(other) as library:
        index = library.index("cls")
        assert library.indexes.builds == 1  # rebuilt from this database, not loaded
        assert index.ntotal == 3000 and index.kind == "flat"  # its own (auto) kind

    # a build killed part way leaves shards and a build folder: the next writer removes them
    dead = lib / "index" / ".build-999999999-0123456789abcdef"
    dead.mkdir()
    (dead / "shard0000.faiss.tmp-999999999-0123456789abcdef").write_bytes(b"x")
    live = lib / "index" / f".build-{os.getpid()}-fedcba9876543210"
    live.mkdir()
    with Library.open(lib) as library:
        library.indexes.refresh(["cls"])
    assert not dead.exists() and live.exists()


def test_new_libraries_use_16k_pages_and_old_ones_keep_theirs(tmp_path):
    import sqlite3

    from vitdex.storage import Store

    def page_size(folder: Path) -> int:
        with sqlite3.connect(folder / "vitdex.sqlite") as db:
            return db.execute("PRAGMA page_size").fetchone()[0]

    Store(tmp_path / "new", create=True).close()
    assert page_size(tmp_path / "new") == 16384
    (tmp_path / "old").mkdir()
    with sqlite3.connect(tmp_path / "old" / "vitdex.sqlite") as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("CREATE TABLE t (x)")  # a database made before: 4 KB pages
    Store(tmp_path / "old", create=True).close()
    assert page_size(tmp_path / "old") == 4096


@pytest.mark.parametrize("kind", ["ivfsq8", "hnsw"])  # joined list by list; searched in pages
def test_dupes_past_the_flat_size_find_the_same_groups_reading_only_members(
    tmp_path, monkeypatch, kind
):
    from vitdex.library import Library
    from vitdex.library.dupes import find_duplicates

    x = clustered(2000, seed=12)
    x[1500:1530] = x[:30] + 0.002 * np.random.default_rng(1).standard_normal((30, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    make_library(tmp_path / "lib", 0)
    add_images(tmp_path / "lib", range(2000), seed=0, x=x)

    def groups(result: dict) -> list[list[int]]:
        return sorted(sorted(m["id"] for m in g["members"]) for g in result["groups"])

    with Library.open(tmp_path / "lib") as library:
        expected = find_duplicates(library, threshold=0.99)  # 2000 <= FLAT_MAX_N: in memory
        assert len(expected["groups"]) >= 30
        monkeypatch.setattr(vi, "FLAT_MAX_N", 100)  # now the library's own index
        library.indexes.rebuild("cls", kind)
        searches: list[int] = []
        search = VectorIndex.search

        def counted(self, queries, *args, **kwargs):
            searches.append(len(queries))
            return search(self, queries, *args, **kwargs)

        monkeypatch.setattr(VectorIndex, "search", counted)
        read: list[int] = []
        of_contents = library.store.vectors.of_contents

        def recorded(spec, feature, contents):
            read.append(len(contents))
            return of_contents(spec, feature, contents)

        monkeypatch.setattr(library.store.vectors, "of_contents", recorded)
        got = find_duplicates(library, threshold=0.99)
    assert groups(got) == groups(expected)
    assert (sum(searches) == 0) if kind == "ivfsq8" else (sum(searches) == 2000)
    assert read and max(read) <= 2 * len(expected["groups"])  # group members only, never all
