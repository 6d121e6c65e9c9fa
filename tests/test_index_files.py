"""vitdex.index files: a plain FAISS file plus a JSON sidecar, memory-mapped on load, saved so
that a kill at any moment leaves a usable pair, and refused with one clear line when damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest

import vitdex.index.vector_index as vi
from tests.test_index import BUILD_ARGS, clustered
from vitdex.index import (
    INDEX_KINDS,
    IndexFileError,
    IndexInputError,
    VectorIndex,
    read_sidecar,
    remove_temp_files,
    sidecar_path,
)
from vitdex.index.vector_index import read_header

N, D = vi.PQ_MIN_VECTORS, 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(2).permutation(np.arange(N, dtype=np.int64) * 7 + 3)
    return ids, clustered(N, D, seed=2)


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:
    ids, x = data
    args = {**BUILD_ARGS, "ivfpq": {"nlist": 32, "m": 8}}
    return {kind: VectorIndex.build(ids, x, kind, **args[kind]) for kind in INDEX_KINDS}


def same_results(a: VectorIndex, b: VectorIndex, x: np.ndarray, allowed: np.ndarray) -> bool:
    for sel in (None, allowed):
        (sa, ia), (sb, ib) = a.search(x, 10, allowed_ids=sel), b.search(x, 10, allowed_ids=sel)
        if not (np.array_equal(ia, ib) and np.allclose(sa, sb)):
            return False
    return True


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_roundtrip_every_kind(built, data, tmp_path, kind, mmap):
    ids, x = data
    index, path = built[kind], tmp_path / f"{kind}.faiss"
    meta = {"library": "4f2a", "generation": 12, "counts": {"images": N}}
    written = index.save(path, meta=meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.faiss", f"{kind}.faiss.json"]
    loaded = VectorIndex.load(path, mmap=mmap)
    assert (loaded.kind, loaded.dim, loaded.ntotal, loaded.params) == (kind, D, N, index.params)
    assert np.array_equal(np.sort(loaded.ids()), np.sort(ids))
    assert same_results(index, loaded, x[:20], ids[::97])
    sidecar = read_sidecar(path)
    assert sidecar == written and sidecar["meta"] == meta
    assert (sidecar["kind"], sidecar["ntotal"], sidecar["bytes"]) == (
        kind,
        N,
        path.stat().st_size,
    )
    # the index file is what faiss.write_index writes (plus a tag FAISS never reads)
    plain = faiss.read_index(str(path))
    assert plain.ntotal == N and plain.d == D
    assert read_header(path)["params"] == index.params


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_mmap_load_maps_the_file(built, data, tmp_path, kind):
    ids, x = data
    path = tmp_path / "index.faiss"
    built[kind].save(path)
    mapped, read = VectorIndex.load(path), VectorIndex.load(path, mmap=False)
    assert mapped.mapped and not read.mapped and not built[kind].mapped
    if kind.startswith("ivf"):  # FAISS's own evidence: the inverted lists are a file mapping
        lists = faiss.downcast_InvertedLists(mapped._index.invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
        owned = faiss.downcast_InvertedLists(read._index.invlists)
        assert isinstance(owned, faiss.ArrayInvertedLists)
    assert same_results(read, mapped, x[:20], ids[:50])


@pytest.mark.parametrize("kind", ["flat", "ivfsq8", "ivfpq"])
def test_mapped_index_can_change_and_be_saved(built, data, tmp_path, kind):
    """A mapped index is read-only to FAISS (a write aborts the process, and a mapped IVF saves
    as a reference to its file): add/remove/save copy it into memory first."""
    ids, x = data
    path = tmp_path / "index.faiss"
    built[kind].save(path)
    before = path.read_bytes()
    mapped = VectorIndex.load(path)
    assert mapped.mapped
    assert mapped.remove(ids[:30]) == 30 and not mapped.mapped
    mapped.add(ids[:10], x[:10])
    assert mapped.ntotal == N - 20 and path.read_bytes() == before  # the file is untouched
    expected = VectorIndex.load(path, mmap=False)
    expected.remove(ids[10:30])
    assert same_results(expected, mapped, x[:20], ids[::50])
    # an unchanged mapped IVF index saved elsewhere holds the data, not a link to `path`
    copy = tmp_path / "copy.faiss"
    VectorIndex.load(path).save(copy)
    path.unlink()
    assert VectorIndex.load(copy).ntotal == N


def test_read_sidecar_does_not_open_the_index_file(built, tmp_path):
    path = tmp_path / "index.faiss"
    built["ivfsq8"].save(path, meta={"generation": 3})
    path.unlink()
    sidecar = read_sidecar(path)
    assert sidecar["meta"] == {"generation": 3} and sidecar["ntotal"] == N
    assert sidecar_path(path) == tmp_path / "index.faiss.json"
    with pytest.raises(IndexFileError, match="index file not found: .*index.faiss"):
        VectorIndex.load(path)


def test_meta_must_be_json(built, tmp_path):
    with pytest.raises(IndexInputError, match="JSON"):
        built["flat"].save(tmp_path / "index.faiss", meta={"when": object()})
    assert list(tmp_path.iterdir()) == []


def damage(path: Path, other: Path, case: str) -> None:
    """Damage the pair at `path` (`other`: a pair of another index in the same folder)."""
    side = sidecar_path(path)
    good = path.read_bytes()
    if case == "index missing":
        path.unlink()
    elif case == "sidecar missing":
        side.unlink()
    elif case == "index truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "index empty":
        path.write_bytes(b"")
    elif case == "index garbage":
        path.write_bytes(b"hello world" * 10)
    elif case == "FAISS header flipped":
        path.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    elif case == "sidecar garbage":
        side.write_bytes(b"{not json")
    elif case == "sidecar of the old format":
        side.write_text(json.dumps({"format": 1, "kind": "flat"}))
    elif case == "sidecar of another index":
        shutil.copy(sidecar_path(other), side)
    elif case == "sidecar without params":
        sidecar = json.loads(side.read_text())
        side.write_text(json.dumps(sidecar | {"params": None}))
    elif case == "sidecar names another kind":
        sidecar = json.loads(side.read_text())
        side.write_text(json.dumps(sidecar | {"kind": "flat"}))
    elif case == "index of another pair":
        shutil.copy(other, path)
    else:
        raise AssertionError(case)


DAMAGE = {
    "index missing": "index file not found",
    "sidecar missing": "index sidecar not found",
    "index truncated": "does not match its sidecar",
    "index empty": "does not match its sidecar",
    "index garbage": "does not match its sidecar",
    "FAISS header flipped": "FAISS cannot read it",
    "sidecar garbage": "not JSON",
    "sidecar of the old format": "unsupported index sidecar",
    "sidecar of another index": "does not match its sidecar",
    "sidecar without params": r"invalid \['params'\]",
    "sidecar names another kind": "IndexIVFScalarQuantizer",
    "index of another pair": "does not match its sidecar",
}


CHEAP = {
    "index file not found",
    "index sidecar not found",
    "does not match its sidecar",
    "not JSON",
    "unsupported index sidecar",
    r"invalid \['params'\]",
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_pair_is_refused_in_one_line(built, tmp_path, case):
    path, other = tmp_path / "index.faiss", tmp_path / "other.faiss"
    built["ivfsq8"].save(path)
    built["ivfsq8"].save(other)  # same index and size: only the token tells them apart
    damage(path, other, case)
    for mmap in (True, False):
        with pytest.raises(IndexFileError, match=DAMAGE[case]) as caught:
            VectorIndex.load(path, mmap=mmap)
        message = str(caught.value)
        assert "\n" not in message and "index.faiss" in message
    if DAMAGE[case] in CHEAP:  # what status sees without FAISS
        with pytest.raises(IndexFileError, match=DAMAGE[case]):
            read_header(path)
    else:
        assert read_header(path)["ntotal"] == N


def test_verify_finds_a_flipped_byte(built, tmp_path):
    path = tmp_path / "index.faiss"
    built["ivfsq8"].save(path)
    VectorIndex.load(path, verify=True)
    good = path.read_bytes()
    middle = len(good) // 2  # inside the inverted lists: FAISS reads it without complaint
    path.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])
    assert VectorIndex.load(path).ntotal == N
    with pytest.raises(IndexFileError, match="checksum mismatch"):
        VectorIndex.load(path, verify=True)


def test_failed_save_keeps_the_previous_pair(built, data, tmp_path, monkeypatch):
    ids, x = data
    path = tmp_path / "index.faiss"
    built["flat"].save(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail_midway(f, chunk):
        if len(chunk) < 1000:
            f.write(chunk)
            return
        f.write(chunk[: len(chunk) // 2])  # the vectors: half written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vi, "_write_chunk", fail_midway)
    with pytest.raises(IndexFileError, match="cannot write index file .*index.faiss: No space"):
        VectorIndex.build(ids[:100], x[:100], "flat").save(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # temp removed
    assert VectorIndex.load(path).ntotal == N


def save_in_subprocess(path: Path, n: int, patch: str) -> subprocess.CompletedProcess:
    """Save an n-vector flat index to `path` in a child process that `patch` kills midway."""
    code = textwrap.dedent(
        f"""
        import os
        import numpy as np
        import vitdex.index.vector_index as vi
        {patch}
        rng = np.random.default_rng(0)
        index = vi.VectorIndex.build(np.arange({n}), rng.random(({n}, {D})), "flat")
        index.save({str(path)!r})
        """
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)


def test_kill_during_write_leaves_old_pair_and_a_temp_file(built, tmp_path):
    path = tmp_path / "index.faiss"
    built["flat"].save(path)
    kill_midway = textwrap.dedent(
        """
        def _write_chunk(f, chunk):
            if len(chunk) < 100_000:
                f.write(chunk)
                return
            f.write(chunk[: len(chunk) // 2])  # the vectors: half written, then killed
            f.flush()
            os._exit(9)
        vi._write_chunk = _write_chunk
        """
    )
    done = save_in_subprocess(path, 5000, kill_midway.replace("\n", "\n        "))
    assert done.returncode == 9, done.stderr
    (temp,) = temp_files(tmp_path)
    assert temp.startswith("index.faiss.tmp-") and (tmp_path / temp).stat().st_size > 100_000
    assert VectorIndex.load(path).ntotal == N
    assert remove_temp_files(tmp_path) == [tmp_path / temp]
    assert temp_files(tmp_path) == [] and remove_temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.faiss.json"]


def test_kill_between_the_renames_rolls_forward(built, tmp_path):
    """The new index file is in place, the old sidecar is not its pair: the new sidecar's
    complete temp file is; load uses it and remove_temp_files renames it into place."""
    path = tmp_path / "index.faiss"
    built["flat"].save(path)
    kill_before_sidecar = textwrap.dedent(
        """
        replace = os.replace
        def kill_before_sidecar(src, dst):
            if str(dst).endswith(".json"):
                os._exit(9)
            replace(src, dst)
        os.replace = kill_before_sidecar
        """
    )
    done = save_in_subprocess(path, 50, kill_before_sidecar.replace("\n", "\n        "))
    assert done.returncode == 9, done.stderr
    (temp,) = temp_files(tmp_path)
    assert temp.startswith("index.faiss.json.tmp-")
    assert read_sidecar(path)["ntotal"] == N  # the old sidecar...
    assert VectorIndex.load(path).ntotal == 50  # ...is not trusted for the new file
    assert remove_temp_files(tmp_path) == []
    assert temp_files(tmp_path) == [] and read_sidecar(path)["ntotal"] == 50
    assert VectorIndex.load(path, mmap=False).ntotal == 50


def test_remove_temp_files_leaves_other_files(built, tmp_path):
    path = tmp_path / "index.faiss"
    built["flat"].save(path)
    keep = [tmp_path / "notes.tmp", tmp_path / "index.faiss.tmp-12-xyz", tmp_path / "x.faiss"]
    for p in keep:
        p.write_bytes(b"x")
    stale = tmp_path / f"other.faiss.json.tmp-{os.getpid()}-{'0' * 16}"
    stale.write_bytes(b"{")
    assert remove_temp_files(tmp_path) == [stale]
    assert all(p.exists() for p in keep) and VectorIndex.load(path).ntotal == N
