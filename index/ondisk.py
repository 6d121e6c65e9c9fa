"""IVF builds that never hold the N vectors: train on a sample, add pages in shards, merge.

Memory is bounded by `memory` (bytes), not by N:
- training reads only the sample rows (`train_rows`: at most max(40 nlist, 50k) vectors);
- vectors then arrive in pages (the caller's reader, e.g. the store's `iter_pages`); each page
  is encoded into the current shard, an in-memory IVF holding at most `shard_capacity` codes,
  which is written to `workdir` when full;
- the shards are merged list by list into one file laid out exactly as `faiss.write_index`
  lays out the same index built in memory (`write_ivf_lists`), so the result loads, maps and
  saves like any index; the shards are read back with pread (not mapped: mapped pages would
  count in the process's memory) and deleted after.
The training phase holds the sample (at most max(40 nlist, 50k) rows: 503 MB at 768-d and 4096
lists) and is over before the adding phase starts; `memory` bounds the adding phase (pages and
shard codes). The process adds its own interpreter, FAISS and SQLite cache on top.
The calibration (nprobe) queries are the same build rows as in memory; their exact neighbours
are kept as a running top-k while the pages stream by, so no second pass over the vectors.

With the same rows, seed and kind, the result is the index `VectorIndex.build` makes in memory
(same centroids, same lists in the same order, same nprobe): tests compare them.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vitdex.index.errors import IndexFileError, IndexInputError, IndexKindError
from vitdex.index.vector_index import (
    RELEASE_EVERY,
    VectorIndex,
    _as_ids,
    _is_mapped,
    _mmap_flags,
    _Source,
    _temp_path,
    _trained_ivf,
    calibration_rows,
    default_nlist,
    ivf_header,
    ivf_list_sizes,
    normalize,
    train_rows,
    write_ivf_header,
    write_ivf_lists,
)

log = logging.getLogger(__name__)

# The default build memory: 1 GiB. Past it, the in-memory build (which holds all N vectors,
# N * d * 4 bytes: 3 KB per 768-d vector) is replaced by this one.
BUILD_MEMORY = 1 << 30
CALIBRATION_K = 10


@dataclass(frozen=True, slots=True)
class PagedVectors:
    """Where an on-disk build reads its vectors from.

    `pages()` yields (ids, vectors) pages in ascending id order, one pass; `rows(positions)`
    returns (ids, vectors) of the vectors at these positions of that order (the training
    sample and calibration queries). `n` is how many vectors `pages()` yields.
    """

    n: int
    dim: int
    pages: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
    rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def shard_capacity(memory: int, code_size: int, page_bytes: int) -> int:
    """Codes one shard may hold: what `memory` leaves after the page buffers, halved because
    FAISS's lists grow by doubling (each code also carries an 8-byte id)."""
    return max(1, (memory - 3 * page_bytes) // (2 * (code_size + 8)))


def build_ivf_on_disk(
    source: PagedVectors,
    kind: str,
    workdir: str | os.PathLike[str],
    *,
    memory: int = BUILD_MEMORY,
    page: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    m: int | None = None,
    centroids: np.ndarray | None = None,
    calibrate: bool = True,
    seed: int = 0,
) -> VectorIndex:
    """An IVF index ("ivfsq8" or "ivfpq") of every vector `source` yields, built in bounded
    memory (see the module doc); `page` is the size of the source's pages (for the budget).

    The returned index is memory-mapped from a file in `workdir` that is already unlinked
    (POSIX) or removed when the index is collected; `save` copies it to its final name.
    """
    import faiss

    if kind not in ("ivfsq8", "ivfpq"):
        raise IndexKindError(f"only IVF kinds are built on disk, not {kind!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n, d = source.n, source.dim
    t0 = time.perf_counter()
    nlist = len(centroids) if centroids is not None else int(nlist or default_nlist(n))
    _, sample = source.rows(train_rows(n, nlist, seed))
    trained, params = _trained_ivf(kind, d, n, normalize(sample, d), nlist, m, centroids, seed)
    del sample
    if nprobe is not None:
        params["nprobe"] = int(nprobe)
    t_train = time.perf_counter() - t0

    k = min(CALIBRATION_K, n - 1)
    calibrating = calibrate and nprobe is None and k >= 1
    if calibrating:
        q_ids, q = source.rows(calibration_rows(n, seed))
        q = normalize(q, d)
        heap = faiss.ResultHeap(len(q), k + 1, keep_max=True)
    capacity = shard_capacity(memory, trained.code_size, page * d * 4)
    shards: list[Path] = []
    token = os.urandom(8)
    shard = faiss.clone_index(trained)
    total, last = 0, -1
    try:
        for ids, vectors in source.pages():
            x = normalize(vectors, d)
            id_arr = _as_ids(ids, len(x))
            if not len(id_arr):
                continue
            if id_arr[0] <= last or (len(id_arr) > 1 and (np.diff(id_arr) <= 0).any()):
                raise IndexInputError("pages must yield unique ids in ascending order")
            last = int(id_arr[-1])
            shard.add_with_ids(x, id_arr)
            total += len(x)
            if calibrating:
                dist, found = faiss.knn(q, x, min(k + 1, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
                heap.add_result(_pad(dist, k + 1, -np.inf), _pad(id_arr[found], k + 1, -1))
            if shard.ntotal >= capacity:
                shards.append(_write_shard(shard, workdir, len(shards), token))
                shard = faiss.clone_index(trained)
        if shard.ntotal or not shards:
            shards.append(_write_shard(shard, workdir, len(shards), token))
        del shard
        t_add = time.perf_counter() - t0 - t_train
        merged = _temp_path(workdir / f"{kind}-build.faiss", token)
        _merge(trained, total, shards, merged)
    finally:
        for path in shards:
            path.unlink(missing_ok=True)
    try:
        self = _open_mapped(merged, kind, d, params)
    except BaseException:
        merged.unlink(missing_ok=True)
        raise
    if calibrating and total:
        heap.finalize()
        self._calibrate_on(q, heap.I, q_ids, k)
    log.info(
        "built %s index on disk: %d x %d in %.1fs (train %.1fs, add %.1fs, %d shard(s) of"
        " at most %d), params %s",
        kind, total, d, time.perf_counter() - t0, t_train, t_add, len(shards), capacity,
        self.params,
    )  # fmt: skip
    return self


def _pad(a: np.ndarray, width: int, fill: Any) -> np.ndarray:
    """Pad rows to `width` columns (a page smaller than k + 1)."""
    if a.shape[1] == width:
        return np.ascontiguousarray(a)
    out = np.full((a.shape[0], width), fill, a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _write_shard(shard: Any, workdir: Path, number: int, token: bytes) -> Path:
    """Write one shard's inverted lists in FAISS's "ilar" layout (no index header); its name
    matches the temp pattern, so `remove_temp_files` clears it if the build is killed."""
    path = _temp_path(workdir / f"shard{number:04d}.ilar", token)
    try:
        with open(path, "xb") as f:
            write_ivf_lists(f.write, shard.nlist, shard.code_size, [shard.invlists])
    except OSError as e:
        path.unlink(missing_ok=True)
        raise IndexFileError(f"cannot write index shard {path}: {e.strerror or e}") from e
    log.debug("wrote shard %s (%d vectors)", path.name, shard.ntotal)
    return path


@dataclass
class _Shard:
    """A shard file read back with pread, list by list: where each list's codes start."""

    fd: int
    sizes: np.ndarray  # vectors per list
    starts: np.ndarray  # byte offset of each list's codes (its ids follow them)

    @classmethod
    def open(cls, path: Path, nlist: int, code_size: int) -> _Shard:
        fd = os.open(path, os.O_RDONLY)
        head = os.pread(fd, 4 + 16 + 4 + 8, 0)
        magic, (n, cs), kind = head[:4], struct.unpack("<QQ", head[4:20]), head[20:24]
        (count,) = struct.unpack("<Q", head[24:32])
        if magic != b"ilar" or (n, cs) != (nlist, code_size) or kind not in (b"full", b"sprs"):
            os.close(fd)
            raise IndexFileError(f"index shard {path} is not what this build wrote")
        table = np.frombuffer(os.pread(fd, 8 * count, 32), "<u8").astype(np.int64)
        sizes = np.zeros(nlist, np.int64)
        if kind == b"full":
            sizes[:] = table
        else:
            sizes[table[0::2]] = table[1::2]
        lengths = sizes * (code_size + 8)
        starts = 32 + 8 * count + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return cls(fd, sizes, starts)


def _merge(trained: Any, total: int, shards: list[Path], out: Path) -> None:
    """Concatenate the shards' lists into `out`, one list at a time. Shards are read with
    pread, not mapped, so the process holds one list, not the pages of every shard."""
    header = _header(trained, total)
    nlist, code_size = trained.nlist, trained.code_size
    parts = [_Shard.open(p, nlist, code_size) for p in shards]
    sizes = np.sum([p.sizes for p in parts], axis=0).astype(np.uint64)
    try:
        with _new_file(out) as f:
            f.write(header)
            write_ivf_header(f.write, nlist, code_size, sizes)
            for lst in np.flatnonzero(sizes).tolist():
                for part in parts:
                    if part.sizes[lst]:
                        length = int(part.sizes[lst]) * code_size
                        f.write(os.pread(part.fd, length, int(part.starts[lst])))
                for part in parts:
                    if part.sizes[lst]:
                        at = int(part.starts[lst]) + int(part.sizes[lst]) * code_size
                        f.write(os.pread(part.fd, int(part.sizes[lst]) * 8, at))
    finally:
        for part in parts:
            os.close(part.fd)


def _open_mapped(path: Path, kind: str, d: int, params: dict[str, Any]) -> VectorIndex:
    """Map the merged file and keep it open; unlink its name at once where the OS allows
    (the mapping and the descriptor keep the data), else when the index is collected."""
    import faiss

    fd = os.open(path, os.O_RDONLY)
    try:
        index = faiss.read_index(str(path), _mmap_flags(kind))
        nbytes = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    self = VectorIndex(index, kind, d, params)
    self._mapped = _is_mapped(index, kind)
    try:
        path.unlink()
        later = None
    except OSError:
        later = path
    self._source = _Source.keep(fd, nbytes, self, unlink=later)
    return self


def catch_up_on_disk(
    index: VectorIndex,
    remove: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    workdir: str | os.PathLike[str],
) -> VectorIndex:
    """A memory-mapped IVF index with the `remove` ids left out and (ids, vectors) added, as a
    new file written list by list into `workdir` and mapped (unlinked at once, like a build's):
    memory is one list plus the added vectors' codes, never the index. `index` is unchanged.

    The added vectors are encoded by an empty copy of the index (same centroids, same
    quantiser), so the result is the index that `remove` then `add` would make in memory."""
    import faiss

    if not index.mapped or not index.kind.startswith("ivf"):
        raise IndexKindError("only a memory-mapped IVF index catches up on disk")
    source = index._index
    nlist, code_size = source.nlist, source.invlists.code_size
    drop = np.unique(_as_ids(remove))
    x = normalize(vectors, index.dim)
    id_arr = _as_ids(ids, len(x))
    added = faiss.deserialize_index(
        np.frombuffer(_header(source, 0) + _empty_lists(nlist, code_size), np.uint8)
    )
    if len(x):
        added.add_with_ids(x, id_arr)
    workdir = Path(workdir)
    out = _temp_path(workdir / f"{index.kind}-catch-up.faiss", os.urandom(8))
    lists_done = 0

    def now_and_then() -> None:  # let go of the mapped pages read so far, now and then
        nonlocal lists_done
        lists_done += 1
        if lists_done % RELEASE_EVERY == 0:
            index.release_pages()

    parts, drops = [source.invlists, added.invlists], [drop, None]
    try:
        sizes = ivf_list_sizes(nlist, parts, drops=drops, after_list=now_and_then)
        with _new_file(out) as f:
            f.write(_header(source, int(sizes.sum())))
            write_ivf_lists(f.write, nlist, code_size, parts, drops=drops, sizes=sizes,
                            after_list=now_and_then)  # fmt: skip
    finally:
        index.release_pages()
    try:
        return _open_mapped(out, index.kind, index.dim, dict(index.params))
    except BaseException:
        out.unlink(missing_ok=True)
        raise


@contextmanager
def _new_file(out: Path) -> Iterator[BinaryIO]:
    """`out`, created for writing and fsynced when done; if writing fails, it is removed and
    the error is one IndexFileError."""
    try:
        with open(out, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        out.unlink(missing_ok=True)
        raise IndexFileError(f"cannot write index file {out}: {e.strerror or e}") from e


def _header(index: Any, ntotal: int) -> bytes:
    """`ivf_header` of `index` as if it held `ntotal` vectors."""
    before = index.ntotal
    index.ntotal = ntotal
    try:
        return ivf_header(index)
    finally:
        index.ntotal = before


def _empty_lists(nlist: int, code_size: int) -> bytes:
    out: list[bytes] = []
    write_ivf_header(out.append, nlist, code_size, np.zeros(nlist, np.uint64))
    return b"".join(out)
