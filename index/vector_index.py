"""A FAISS vector index keyed by the caller's int64 ids, searched by cosine (inner product on
L2-normalised vectors), with in-FAISS id filtering.

On disk an index is two files: `<name>`, plain `faiss.write_index` output followed by a 16-byte
tag (magic + random token), and `<name>.json`, the sidecar (kind, dim, ntotal, search params,
size, CRC-32 and token of the index file, and a caller's `meta` dict). `faiss.read_index` reads
the index file as it is; `VectorIndex.load` memory-maps it, so opening a large IVF index costs
milliseconds. Saves are atomic per pair (see `VectorIndex.save`); `remove_temp_files` clears
what interrupted saves leave behind.

faiss is imported inside functions only, so importing vitdex.index stays cheap.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import mmap
import os
import re
import struct
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vitdex.index.errors import IndexFileError, IndexInputError, IndexKindError

log = logging.getLogger(__name__)

INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivfsq8", "ivfpq")

# --- choose_kind thresholds: measured in docs/benchmarks.md, section "Search". ---
# Flat is exact, needs no training and removes cheaply, but a query scans every vector: ~0.4 us
# per 768-d vector on the 2-core bench machine (about 0.4 s at 1M, 1 s under load) and 3 KB per
# vector. Up to FLAT_MAX_N a query stays around the 3-4 ms budget; past it "auto" switches to
# IVF + SQ8 (1M: p50 0.55 ms at recall@10 0.994, 788 B/vector). HNSW (3.3 KB/vector at d=768,
# slow to build) and IVF-PQ (recall plateaus at ~0.83) are never chosen automatically.
FLAT_MAX_N = 10_000
AUTO_APPROX_KIND = "ivfsq8"

# IVF sizing: nlist ~ 4 sqrt(n), at most NLIST_MAX, with >= MIN_POINTS_PER_LIST training points
# per list; coarse k-means runs on at most max(40 * nlist, 50k) sampled vectors.
NLIST_MAX = 4096
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 40
TRAIN_MIN_SAMPLE = 50_000
KMEANS_NITER = 10
# IVF-PQ codes: 8 bits per sub-quantizer, i.e. 256-centroid codebooks, which FAISS trains
# without a warning only from MIN_POINTS_PER_LIST points per centroid.
PQ_NBITS = 8
PQ_MIN_VECTORS = MIN_POINTS_PER_LIST * 2**PQ_NBITS
# Build-time calibration: the smallest nprobe / efSearch whose measured recall@10 reaches this.
RECALL_TARGET = 0.98
CALIBRATION_QUERIES = 200
# Lists read between two `release_pages` of a mapped IVF index in a pass over many lists.
RELEASE_EVERY = 256
CALIBRATION_BATCH = 25  # queries per search while calibrating (a mapped index: see release_pages)
HNSW_MIN_EF_SEARCH = 64


def choose_kind(n: int) -> str:
    """The kind "auto" builds for n vectors: exact Flat while it is fast enough, else IVF-SQ8.

    Thresholds come from the measured table in docs/benchmarks.md ("Search").
    """
    if n < 0:
        raise IndexInputError(f"n must be >= 0, got {n}")
    return "flat" if n <= FLAT_MAX_N else AUTO_APPROX_KIND


def min_vectors(kind: str) -> int:
    """The fewest vectors `VectorIndex.build` accepts for `kind` (without reused centroids).

    IVF-PQ trains 256-centroid codebooks and FAISS wants 39 points per centroid; IVF-SQ8 needs
    one vector (a single list); Flat and HNSW need none.
    """
    if kind not in INDEX_KINDS:
        raise IndexKindError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    return {"ivfpq": PQ_MIN_VECTORS, "ivfsq8": 1}.get(kind, 0)


def default_nlist(n: int) -> int:
    """~4 sqrt(n) inverted lists, capped, and never fewer than 39 training points per list."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), NLIST_MAX, n // MIN_POINTS_PER_LIST)))


def normalize(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Float32 C-contiguous rows with unit L2 norm (a copy only when something must change)."""
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise IndexInputError(f"vectors must be 2-D (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise IndexInputError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not len(x):
        return x
    norms = np.linalg.norm(x, axis=1)
    if not np.isfinite(norms).all():
        raise IndexInputError("vectors contain NaN or infinite values")
    if np.all(np.abs(norms - 1.0) < 1e-4):
        return x
    norms[norms == 0] = 1.0  # a zero vector stays zero: it matches nothing
    return x / norms[:, None].astype(np.float32)


def _as_ids(ids: Iterable[int] | np.ndarray, n: int | None = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise IndexInputError(f"ids must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise IndexInputError(f"ids must be integers, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if n is not None and len(a) != n:
        raise IndexInputError(f"{len(a)} ids for {n} vectors")
    if a.size and a.min() < 0:
        raise IndexInputError("ids must be >= 0 (-1 pads missing results)")
    return a


def train_rows(n: int, nlist: int, seed: int) -> np.ndarray:
    """Positions (in id order) of the vectors an IVF build of n vectors trains on: at most
    max(40 * nlist, 50k), drawn with `seed`. The on-disk build reads exactly these rows, so
    both builds train on the same sample and give the same index."""
    sample_n = min(n, max(TRAIN_POINTS_PER_LIST * nlist, TRAIN_MIN_SAMPLE))
    if sample_n == n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample_n, replace=False))


def calibration_rows(n: int, seed: int) -> np.ndarray:
    """Positions (in id order) of the build vectors used as calibration queries."""
    return np.sort(
        np.random.default_rng(seed + 1).choice(n, min(CALIBRATION_QUERIES, n), replace=False)
    )


def _trained_ivf(
    kind: str,
    d: int,
    n: int,
    sample: np.ndarray,
    nlist: int,
    m: int | None,
    centroids: np.ndarray | None,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    """An empty IVF index of `kind` trained on `sample` (normalised rows), and its params;
    `n` is the number of vectors it will hold (the size checks are on it)."""
    import faiss

    c = normalize(centroids, d) if centroids is not None else None
    if kind == "ivfpq":
        m = int(m or _default_pq_m(d))
        if d % m:
            raise IndexInputError(f"PQ m={m} must divide the dimension {d}")
    need = min_vectors(kind) if c is None or kind == "ivfpq" else 0
    if n < need:
        hint = "; use ivfsq8 or flat" if kind == "ivfpq" else ""
        raise IndexKindError(f"{kind} needs at least {need} vectors to train, got {n}{hint}")
    if c is None and nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        raise IndexInputError(
            f"{kind} with nlist={nlist} needs at least {MIN_POINTS_PER_LIST * nlist} "
            f"vectors to train, got {n}"
        )
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivfsq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        params: dict[str, Any] = {"nlist": nlist, "nprobe": min(16, nlist)}
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False
        index.pq.cp.niter = KMEANS_NITER  # codebooks: 10 k-means rounds, not 25
        params = {"nlist": nlist, "nprobe": min(16, nlist), "m": m, "nbits": PQ_NBITS}
    index.own_fields = True
    quantizer.this.disown()
    if c is not None:
        quantizer.add(c)  # IndexIVF skips coarse training when the quantizer is full
    elif nlist == 1:
        # spherical k-means with one centroid is the normalised mean: no k-means (and no
        # FAISS warning about fewer than 39 points), so ivfsq8 works from one vector
        quantizer.add(normalize(sample.mean(axis=0, dtype=np.float64)))
    else:
        cp = faiss.ClusteringParameters()
        cp.niter = KMEANS_NITER
        cp.seed = seed
        cp.spherical = True
        cp.max_points_per_centroid = 10**9  # we already sampled
        clus = faiss.Clustering(d, nlist, cp)
        clus.train(sample, quantizer)
    index.train(sample)
    return index, params


class VectorIndex:
    """One FAISS index plus its kind and search parameters.

    Kinds: "flat" (exact), "hnsw", "ivfsq8" (IVF + 8-bit scalar quantizer), "ivfpq".
    FAISS ids are the caller's ids: flat and hnsw wrap IndexIDMap2, IVF kinds store ids natively
    (IndexIDMap2's removal assumes the sub-index renumbers, which IVF does not).
    HNSW cannot remove vectors: `remove` raises IndexKindError; rebuild the index instead.
    """

    def __init__(self, index: Any, kind: str, dim: int, params: dict[str, Any]) -> None:
        """Wrap an existing FAISS index; use `build` or `load` rather than calling this."""
        if kind not in INDEX_KINDS:
            raise IndexKindError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
        self._index = index
        self.kind = kind
        self.dim = int(dim)
        self.params: dict[str, Any] = dict(params)
        self._ids_cache: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None
        self._mapped = False
        # A mapped IVF index's file: (open descriptor, FAISS bytes), so `save` copies it
        # instead of reading it into memory (set by `load` and the on-disk build).
        self._source: _Source | None = None

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        kind: str = "auto",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        m: int | None = None,
        M: int = 32,  # noqa: N803 - FAISS's name for HNSW degree
        ef_construction: int = 40,
        ef_search: int | None = None,
        centroids: np.ndarray | None = None,
        calibrate: bool = True,
        seed: int = 0,
    ) -> VectorIndex:
        """Build an index of `kind` ("auto" = choose_kind(n)) over normalised `vectors`.

        IVF kinds train a coarse quantizer (or reuse `centroids`, e.g. from a previous build)
        and, with `calibrate`, pick the smallest nprobe (HNSW: efSearch) reaching
        RECALL_TARGET recall@10 on a sample of the build vectors; it is stored with the index.
        """
        import faiss

        x = normalize(vectors)
        n, d = x.shape
        id_arr = _as_ids(ids, n)
        if len(np.unique(id_arr)) != n:
            raise IndexInputError("ids contain duplicates")
        if kind == "auto":
            kind = choose_kind(n)
        if kind not in INDEX_KINDS:
            raise IndexKindError(
                f"unknown index kind {kind!r}; expected one of {INDEX_KINDS} or 'auto'"
            )
        t0 = time.perf_counter()
        params: dict[str, Any] = {}
        keep: list[Any] = []
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
            index.add_with_ids(x, id_arr)
        elif kind == "hnsw":
            sub = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
            sub.hnsw.efConstruction = ef_construction
            keep.append(sub)
            index = faiss.IndexIDMap2(sub)
            index.add_with_ids(x, id_arr)
            ef = ef_search or HNSW_MIN_EF_SEARCH
            params = {"M": M, "efConstruction": ef_construction, "efSearch": ef}
        else:
            index, params = cls._build_ivf(kind, x, id_arr, nlist, m, centroids, seed)
            if nprobe is not None:
                params["nprobe"] = int(nprobe)
        self = cls(index, kind, d, params)
        self._keep = keep
        if (
            calibrate
            and n
            and (
                (kind.startswith("ivf") and nprobe is None)
                or (kind == "hnsw" and ef_search is None)
            )
        ):
            self._calibrate(x, id_arr, seed)
        log.info(
            "built %s index: %d x %d in %.1fs, params %s",
            kind,
            n,
            d,
            time.perf_counter() - t0,
            self.params,
        )
        return self

    @staticmethod
    def _build_ivf(
        kind: str,
        x: np.ndarray,
        ids: np.ndarray,
        nlist: int | None,
        m: int | None,
        centroids: np.ndarray | None,
        seed: int,
    ) -> tuple[Any, dict[str, Any]]:
        """IVF-SQ8 / IVF-PQ built by hand: index_factory's PQ turns on slow polysemous training.

        Sizes are checked before anything is trained, so FAISS never prints its "please provide
        at least N training points" warnings: too few vectors raise instead.
        """
        n, d = x.shape
        nlist = len(centroids) if centroids is not None else int(nlist or default_nlist(n))
        rows = train_rows(n, nlist, seed)
        sample = x if len(rows) == n else x[rows]
        index, params = _trained_ivf(kind, d, n, sample, nlist, m, centroids, seed)
        if n:
            index.add_with_ids(x, ids)
        return index, params

    def _calibrate(self, x: np.ndarray, ids: np.ndarray, seed: int) -> None:
        """Pick the smallest nprobe/efSearch reaching RECALL_TARGET on a build-vector sample.

        Queries are build vectors; each query's own id is dropped from both lists so the
        estimate matches unseen queries (a self match would inflate recall by ~1/k).
        """
        import faiss

        n = len(x)
        k = min(10, n - 1)
        if k < 1:
            return
        rows = calibration_rows(n, seed)
        q = x[rows]
        _, gt = faiss.knn(q, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        self._calibrate_on(q, ids[gt], ids[rows], k)

    def _calibrate_on(
        self, q: np.ndarray, gt_ids: np.ndarray, self_ids: np.ndarray, k: int
    ) -> None:
        """Calibrate on queries `q` (build vectors with ids `self_ids`) whose exact top-(k+1)
        ids are `gt_ids`; shared by the in-memory and the on-disk builds."""
        n = self.ntotal
        key, top = ("nprobe", self.params["nlist"]) if self.kind != "hnsw" else ("efSearch", n)
        # HNSW starts at 64: build vectors are graph nodes, so they overstate recall for new
        # queries (measured: efSearch=16 gave 0.98 on build vectors, 0.94 on held-out ones).
        value = 1 if key == "nprobe" else min(HNSW_MIN_EF_SEARCH, n)
        measured: dict[int, float] = {}
        while True:
            parts = []
            for start in range(0, len(q), CALIBRATION_BATCH):
                batch = q[start : start + CALIBRATION_BATCH]
                parts.append(self._raw_search(batch, k + 1, None, {key: value})[1])
                self.release_pages()  # a mapped file: its pages read so far leave our RSS
            got = np.concatenate(parts)
            measured[value] = _recall_excluding(gt_ids, got, self_ids, k)
            log.debug("calibration %s=%d recall@%d=%.4f", key, value, k, measured[value])
            if measured[value] >= RECALL_TARGET or value >= top:
                break
            if measured.get(value // 2, -1.0) > measured[value] - 0.002:
                break  # plateau: more probes buy nothing (IVF-PQ's code error dominates)
            value = min(value * 2, top)
        if measured[value] >= RECALL_TARGET:
            chosen = value
        else:  # plateau (IVF-PQ): the smallest setting within 0.005 of the best recall
            best = max(measured.values())
            chosen = min(v for v, r in measured.items() if r >= best - 0.005)
            log.warning(
                "%s: recall@%d reaches only %.3f (< %.2f); using %s=%d",
                self.kind,
                k,
                best,
                RECALL_TARGET,
                key,
                chosen,
            )
        self.params[key] = int(chosen)
        self.params["calibrated_recall"] = round(measured[chosen], 4)

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """The ids in the index (read-only array, cached until the next add/remove)."""
        if self._ids_cache is None:
            import faiss

            if self.kind in ("flat", "hnsw"):
                arr = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
            else:
                invlists = self._index.invlists
                parts = []
                for lst in range(self._index.nlist):
                    size = invlists.list_size(lst)
                    if size:
                        parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                    if lst % RELEASE_EVERY == RELEASE_EVERY - 1:
                        self.release_pages()  # ids lie between codes: pages around them map too
                self.release_pages()
                arr = np.concatenate(parts) if parts else np.empty(0, np.int64)
            arr.flags.writeable = False
            self._ids_cache = arr
            self._sorted_ids = np.sort(arr)
        return self._ids_cache

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of `ids` already in the index: O(len(ids) log n) on the cached sort."""
        self.ids()
        sorted_ids = self._sorted_ids
        if not len(sorted_ids):
            return np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return sorted_ids[pos] == ids

    @property
    def centroids(self) -> np.ndarray | None:
        """The IVF coarse centroids (nlist, d), to reuse in a rebuild; None for other kinds."""
        if not self.kind.startswith("ivf"):
            return None
        import faiss

        q = faiss.downcast_index(self._index.quantizer)
        return q.reconstruct_n(0, q.ntotal)

    def release_pages(self) -> None:
        """Let go of the pages of a memory-mapped IVF file that this process has read (they
        stay in the OS page cache for the next reader). A mapping's pages count in the
        process's RSS once touched, so a pass over many lists (calibration, the duplicate
        join) would otherwise hold up to the whole file; a no-op for other indexes."""
        if not self._mapped or not self.kind.startswith("ivf"):
            return
        import faiss

        lists = faiss.downcast_InvertedLists(self._index.invlists)
        size = int(lists.totsize)
        if size and _madvise is not None:
            _madvise(int(lists.ptr), size, mmap.MADV_DONTNEED)

    def list_sizes(self) -> np.ndarray:
        """Vectors per IVF inverted list (nlist,); IndexKindError for other kinds."""
        if not self.kind.startswith("ivf"):
            raise IndexKindError(f"a {self.kind} index has no inverted lists")
        invlists = self._index.invlists
        return np.array([invlists.list_size(lst) for lst in range(self._index.nlist)], np.int64)

    def list_codes(self, lst: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes (size, code_size) uint8) of one IVF inverted list: read-only views of
        the index's memory or mapping, valid while the index is alive and unchanged."""
        import faiss

        invlists = self._index.invlists
        size = invlists.list_size(lst)
        code_size = invlists.code_size
        if not size:
            return np.empty(0, np.int64), np.empty((0, code_size), np.uint8)
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * code_size)
        return ids, codes.reshape(size, code_size)

    def decode(self, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The vectors of IVF `codes` (n, code_size), row i stored in list `lists[i]` (so with
        the kind's quantisation error)."""
        n = len(codes)
        if not n:
            return np.empty((0, self.dim), np.float32)
        # sa_decode reads each code behind its list number (little-endian, coarse_code_size).
        width = self._index.coarse_code_size()
        prefixed = np.empty((n, width + codes.shape[1]), np.uint8)
        numbers = np.ascontiguousarray(lists, dtype="<u8").reshape(n)
        prefixed[:, :width] = numbers.view(np.uint8).reshape(n, 8)[:, :width]
        prefixed[:, width:] = codes
        return self._index.sa_decode(prefixed)

    def set_search_params(self, **params: int) -> None:
        """Change the default nprobe (IVF) or efSearch (HNSW) stored with the index."""
        allowed = {"ivfsq8": {"nprobe"}, "ivfpq": {"nprobe"}, "hnsw": {"efSearch"}}.get(
            self.kind, set()
        )
        unknown = set(params) - allowed
        if unknown:
            raise IndexKindError(f"{self.kind} has no search parameter(s) {sorted(unknown)}")
        self.params.update({k: int(v) for k, v in params.items()})

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"params={self.params})"
        )

    @property
    def can_remove(self) -> bool:
        """Whether `remove` works; HNSW graphs cannot drop nodes (rebuild instead)."""
        return self.kind != "hnsw"

    # ------------------------------------------------------------------ edits
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new ids; an id already present raises IndexInputError.

        A memory-mapped index (`load` with mmap) is first copied into memory.
        """
        x = normalize(vectors, self.dim)
        id_arr = _as_ids(ids, len(x))
        if not len(x):
            return
        if len(np.unique(id_arr)) != len(id_arr):
            raise IndexInputError("ids contain duplicates")
        present = self._present(id_arr)
        if present.any():
            raise IndexInputError(
                f"{int(present.sum())} id(s) already in the index, "
                f"e.g. {id_arr[present][:5].tolist()}"
            )
        self._own()
        self._index.add_with_ids(x, id_arr)
        self._ids_cache = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids (absent ones are ignored); returns how many were removed.

        HNSW graphs cannot drop nodes: raises IndexKindError, rebuild the index instead.
        A memory-mapped index (`load` with mmap) is first copied into memory.
        """
        import faiss

        if self.kind == "hnsw":
            raise IndexKindError("an HNSW index cannot remove vectors; rebuild it without them")
        id_arr = _as_ids(ids)
        if not id_arr.size or not self.ntotal:
            return 0
        self._own()
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(np.unique(id_arr))))
        self._ids_cache = None
        return removed

    # ------------------------------------------------------------------ search
    def _search_params(self, sel: Any, overrides: dict[str, int]) -> Any:
        import faiss

        p = {**self.params, **overrides}
        if self.kind.startswith("ivf"):
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(min(p["nprobe"], p["nlist"])))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(p["efSearch"]))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _raw_search(
        self, q: np.ndarray, k: int, sel: Any, overrides: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            overrides = {"efSearch": max(k, overrides.get("efSearch", self.params["efSearch"]))}
        params = self._search_params(sel, overrides)
        return self._index.search(q, k, params=params)

    def _escalation(self, k: int) -> list[dict[str, int]]:
        """Search settings tried in turn when too few results come back: up to exhaustive."""
        if self.kind.startswith("ivf"):
            nlist, p = self.params["nlist"], self.params["nprobe"]
            steps = [p]
            while steps[-1] < nlist:
                steps.append(min(steps[-1] * 4, nlist))
            return [{"nprobe": s} for s in steps]
        if self.kind == "hnsw":
            ef, steps = max(k, self.params["efSearch"]), []
            steps = [ef]
            while steps[-1] < self.ntotal:
                steps.append(min(steps[-1] * 4, self.ntotal))
            return [{"efSearch": s} for s in steps]
        return [{}]

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine scores (m, k) float32, descending, and ids (m, k) int64.

        Rows are padded with -inf / -1 when fewer than k results exist. `allowed_ids` restricts
        the search inside FAISS (IDSelectorBatch); if at least k allowed ids are in the index,
        k results come back: IVF/HNSW escalate nprobe/efSearch up to exhaustive when a
        restrictive selector leaves rows short.
        """
        import faiss

        if k < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        q = normalize(queries, self.dim)
        mq = len(q)
        scores = np.full((mq, k), -np.inf, np.float32)
        out_ids = np.full((mq, k), -1, np.int64)
        if not mq or not self.ntotal:
            return scores, out_ids
        sel = None
        if allowed_ids is not None:
            allowed = np.unique(_as_ids(allowed_ids))
            if not allowed.size:
                return scores, out_ids
            sel = faiss.IDSelectorBatch(allowed)
            available = int(self._present(allowed).sum())
        else:
            allowed = None
            available = self.ntotal
        target = min(k, available)
        if target == 0:
            return scores, out_ids
        kk = min(k, self.ntotal)
        todo = np.arange(mq)
        for overrides in self._escalation(kk):
            d, i = self._raw_search(q[todo], kk, sel, overrides)
            scores[todo, :kk] = d
            out_ids[todo, :kk] = i
            todo = todo[(i[:, :target] < 0).any(axis=1)]
            if not todo.size:
                break
        if todo.size and self.kind == "hnsw" and allowed is not None:
            self._exact_fallback(q, todo, allowed, kk, scores, out_ids)
        missing = out_ids < 0
        scores[missing] = -np.inf
        return scores, out_ids

    def _exact_fallback(
        self,
        q: np.ndarray,
        rows: np.ndarray,
        allowed: np.ndarray,
        k: int,
        scores: np.ndarray,
        out_ids: np.ndarray,
    ) -> None:
        """Brute force over the allowed vectors for rows HNSW could not fill (graph unreachable)."""
        present = allowed[self._present(allowed)]
        vecs = np.vstack([self._index.reconstruct(int(i)) for i in present])
        sims = q[rows] @ vecs.T
        kk = min(k, len(present))
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        scores[rows, :kk] = np.take_along_axis(sims, top, axis=1)
        out_ids[rows, :kk] = present[top]

    # ------------------------------------------------------------------ file
    @property
    def mapped(self) -> bool:
        """Whether the vectors are read from the index file through mmap (see `load`)."""
        return self._mapped

    def _own(self) -> None:
        """Copy a memory-mapped index into memory so it can be changed or saved.

        The mapping is read-only (FAISS aborts the process on a write to a mapped flat index),
        and FAISS would save a mapped IVF index as a reference to its file, not as data.
        """
        if not self._mapped:
            return
        import faiss

        if self.kind.startswith("ivf"):
            src = self._index.invlists
            own = faiss.ArrayInvertedLists(src.nlist, src.code_size)
            for lst in range(src.nlist):
                size = src.list_size(lst)
                if size:
                    own.add_entries(lst, size, src.get_ids(lst), src.get_codes(lst))
            self._index.replace_invlists(own, True)
            own.this.disown()
        else:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
        self._mapped = False
        log.info("copied the memory-mapped %s index into memory", self.kind)

    def save(
        self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the index to `path` and its sidecar to `path` + ".json"; returns the sidecar.

        `meta` is any JSON-ready dict the caller wants back from `read_sidecar` (the library
        puts its id, generation and counts there). Each file is written to
        `<final name>.tmp-<pid>-<token>` in the same folder and fsynced; then the index file is
        renamed into place and the sidecar last, so a sidecar's presence means the index file
        is complete. The index file ends with a 16-byte tag holding a random token that the
        sidecar records too: an old sidecar never passes for a new index file. A kill between
        the two renames leaves the new index file and its complete sidecar temp file, which
        `load` and `remove_temp_files` roll forward; at any other moment the old or the new
        pair is in place. A mapped index is copied into memory first (see `_own`).
        IndexFileError when a file cannot be written (the previous pair is then untouched).
        """
        import faiss

        path = Path(path)
        side = sidecar_path(path)
        try:
            json.dumps(meta or {})
        except (TypeError, ValueError) as e:
            raise IndexInputError(f"index meta must be JSON-serialisable: {e}") from e
        source = self._source if self._mapped else None
        if source is None:
            self._own()
        token = os.urandom(_TAG.size - len(_TAG_MAGIC))
        data_tmp, side_tmp = _temp_path(path, token), _temp_path(side, token)
        renamed = False
        try:
            with open(data_tmp, "xb") as f:
                crc = _copy_source(source, f) if source else _stream_index(self._index, f)
                f.write(_TAG.pack(_TAG_MAGIC, token))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            sidecar = {
                "format": FORMAT_VERSION,
                "kind": self.kind,
                "dim": self.dim,
                "ntotal": self.ntotal,
                "params": self.params,
                "bytes": size,
                "crc32": crc,
                "token": token.hex(),
                "faiss": faiss.__version__,
                "meta": meta or {},
            }
            with open(side_tmp, "xb") as f:
                f.write(json.dumps(sidecar, sort_keys=True, indent=1).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(data_tmp, path)
            renamed = True
            os.replace(side_tmp, side)
        except BaseException as e:
            data_tmp.unlink(missing_ok=True)
            if not renamed:  # after the first rename the sidecar temp is the new pair's half
                side_tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):  # disk full, read-only folder, ...
                raise IndexFileError(f"cannot write index file {path}: {e.strerror or e}") from e
            raise
        _fsync_dir(path.parent)
        log.info("saved %s index (%d vectors) to %s", self.kind, self.ntotal, path)
        return sidecar

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, mmap: bool = True, verify: bool = False
    ) -> VectorIndex:
        """Open an index written by `save`; IndexFileError (one line naming the file) when the
        index file or its sidecar is missing, truncated, corrupt or not the pair's other half.

        With `mmap`, FAISS maps the file instead of reading it: IVF inverted lists
        (IO_FLAG_MMAP) and the Flat/HNSW vectors (IO_FLAG_MMAP_IFC, where this faiss has it),
        so opening a large index costs milliseconds and pages are read as searches touch them.
        A mapped index searches like any other; `add`, `remove` and `save` first copy it into
        memory, which costs about what `mmap=False` (a plain read) costs up front, so load with
        `mmap=False` when you mean to change it. The file must only ever be replaced by rename
        (as `save` does), never rewritten in place, while a mapped copy is open.
        `verify` also checks the CRC-32 of the whole file (reads it all).
        """
        path = Path(path)
        reason = ""
        for _ in range(_LOAD_ATTEMPTS):
            sidecar = read_sidecar(path)
            try:
                return cls._open(path, sidecar, mmap, verify)
            except _NotThePair as e:
                reason = str(e)
                pending = _pending_sidecar(path, e.token) if e.token else None
            if pending is not None:  # a save was killed (or is) between its two renames
                try:
                    return cls._open(path, pending, mmap, verify)
                except _NotThePair as e:
                    reason = str(e)
        raise IndexFileError(_not_the_pair_message(path, reason))

    @classmethod
    def _open(cls, path: Path, sidecar: dict[str, Any], mmap: bool, verify: bool) -> VectorIndex:
        """Check that the file at `path` is the one `sidecar` describes, then let FAISS read it.

        The file stays open while FAISS reads it by name: if the name still leads to the same
        inode afterwards, FAISS read the file that was checked (a concurrent save renames a new
        inode into place, and the open one cannot be reused meanwhile).
        """
        import faiss

        kind = sidecar["kind"]
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                _check_pair(f, st.st_size, sidecar)
                if verify and _crc(f, st.st_size - _TAG.size) != sidecar["crc32"]:
                    raise IndexFileError(f"corrupt index file {path}: checksum mismatch")
                flags = _mmap_flags(kind) if mmap else 0
                try:
                    try:
                        index = faiss.read_index(str(path), flags)
                    except RuntimeError:
                        if not flags:
                            raise
                        log.debug("cannot map %s; reading it instead", path, exc_info=True)
                        index = faiss.read_index(str(path))
                except RuntimeError as e:
                    reason = str(e).strip().splitlines()[-1][:200]
                    raise IndexFileError(
                        f"corrupt index file {path}: FAISS cannot read it ({reason})"
                    ) from e
                now = os.stat(path)
                fd = os.dup(f.fileno())
        except FileNotFoundError:
            raise IndexFileError(f"index file not found: {path}") from None
        except OSError as e:
            raise IndexFileError(f"cannot read index file {path}: {e.strerror or e}") from e
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            os.close(fd)
            raise _NotThePair(None, "replaced while loading")
        expected = (sidecar["ntotal"], sidecar["dim"])
        if not _is_kind(index, kind) or (index.ntotal, index.d) != expected:
            os.close(fd)
            raise IndexFileError(
                f"corrupt index file {path}: it holds a {type(index).__name__} of "
                f"{index.ntotal} x {index.d}, its sidecar says {kind} of "
                f"{sidecar['ntotal']} x {sidecar['dim']}"
            )
        self = cls(index, kind, sidecar["dim"], sidecar["params"])
        self._mapped = _is_mapped(index, kind)
        if self._mapped and kind.startswith("ivf"):
            self._source = _Source.keep(fd, st.st_size - _TAG.size, self)
        else:
            os.close(fd)
        return self


# --- index files: `<name>` (FAISS bytes + tag) and `<name>.json` (the sidecar) ---------------
FORMAT_VERSION = 2
SIDECAR_SUFFIX = ".json"
_TAG_MAGIC = b"VDXTAG02"
_TAG = struct.Struct("<8s8s")  # magic, random token (also in the sidecar)
_TEMP = re.compile(r"\.tmp-\d+-(?P<token>[0-9a-f]{16})$")
_SIDECAR_KEYS = {
    "kind": str,
    "dim": int,
    "ntotal": int,
    "params": dict,
    "bytes": int,
    "crc32": int,
    "token": str,
    "meta": dict,
}
_LOAD_ATTEMPTS = 3


class _NotThePair(Exception):
    """The index file is not the one the sidecar describes (`token`: the file's own, if any)."""

    def __init__(self, token: str | None, reason: str) -> None:
        super().__init__(reason)
        self.token = token


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of an index file: the same name plus ".json"."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of the index file `path` (kind, dim, ntotal, params, bytes, crc32, token,
    faiss, meta), read without touching the index file, so reporting on it stays cheap.

    IndexFileError when the sidecar is missing (the index file is incomplete or was written by
    an older vitdex), unreadable, or not a sidecar of this format.
    """
    side = sidecar_path(path)
    try:
        return _parse_sidecar(side, side.read_bytes())
    except FileNotFoundError:
        raise IndexFileError(
            f"index sidecar not found: {side} (the index is incomplete or from an older vitdex)"
        ) from None
    except OSError as e:
        raise IndexFileError(f"cannot read index sidecar {side}: {e.strerror or e}") from e


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`read_sidecar`, plus a cheap check (size and tag, no FAISS) that the index file is the one
    the sidecar describes; for reports such as `status` that must notice a damaged file."""
    path = Path(path)
    sidecar = read_sidecar(path)
    try:
        with open(path, "rb") as f:
            _check_pair(f, os.fstat(f.fileno()).st_size, sidecar)
    except FileNotFoundError:
        raise IndexFileError(f"index file not found: {path}") from None
    except OSError as e:
        raise IndexFileError(f"cannot read index file {path}: {e.strerror or e}") from e
    except _NotThePair as e:
        pending = _pending_sidecar(path, e.token) if e.token else None
        if pending is None:
            raise IndexFileError(_not_the_pair_message(path, str(e))) from None
        return pending
    return sidecar


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files that interrupted saves left in `folder`; returns the deleted paths.

    A sidecar temp whose token matches the index file now in place (a save killed between its
    two renames) is renamed into place instead of deleted. Call it only while no save can run
    (under the library's write lock): it would delete a running save's temp files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for temp in sorted(folder.iterdir()):
        match = _TEMP.search(temp.name)
        if not match or not temp.is_file():
            continue
        final = temp.with_name(temp.name[: match.start()])
        if final.name.endswith(SIDECAR_SUFFIX):
            data = final.with_name(final.name[: -len(SIDECAR_SUFFIX)])
            if _file_token(data) == match["token"]:
                os.replace(temp, final)
                log.info("completed the interrupted save of %s", data)
                continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    if removed:
        _fsync_dir(folder)
        log.info("removed %d temp file(s) of interrupted index saves in %s", len(removed), folder)
    return removed


def _check_pair(f: BinaryIO, size: int, sidecar: dict[str, Any]) -> None:
    """Raise _NotThePair unless the open index file `f` of `size` bytes is the sidecar's."""
    token = _read_tag(f, size)
    if size != sidecar["bytes"]:
        raise _NotThePair(token, f"{size} bytes, the sidecar says {sidecar['bytes']}")
    if token != sidecar["token"]:
        mine = f"token {token}" if token else "no end tag"
        raise _NotThePair(token, f"{mine}, the sidecar's token is {sidecar['token']}")


def _not_the_pair_message(path: Path, reason: str) -> str:
    return f"corrupt index file {path}: it does not match its sidecar ({reason})"


def _parse_sidecar(side: Path, raw: bytes) -> dict[str, Any]:
    try:
        sidecar = json.loads(raw)
    except ValueError:
        raise IndexFileError(f"corrupt index sidecar {side}: not JSON") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT_VERSION:
        found = sidecar.get("format") if isinstance(sidecar, dict) else None
        raise IndexFileError(f"unsupported index sidecar {side}: format {found!r}")
    wrong = [k for k, t in _SIDECAR_KEYS.items() if not isinstance(sidecar.get(k), t)]
    if wrong:
        raise IndexFileError(f"corrupt index sidecar {side}: missing or invalid {wrong}")
    if sidecar["kind"] not in INDEX_KINDS:
        raise IndexFileError(f"corrupt index sidecar {side}: unknown kind {sidecar['kind']!r}")
    return sidecar


def _pending_sidecar(path: Path, token: str) -> dict[str, Any] | None:
    """The complete sidecar temp of a save with `token`, if one was left between its renames."""
    side = sidecar_path(path)
    for temp in path.parent.glob(f"{glob.escape(side.name)}.tmp-*-{token}"):
        try:
            return _parse_sidecar(temp, temp.read_bytes())
        except (OSError, IndexFileError):
            continue
    return None


def _temp_path(final: Path, token: bytes) -> Path:
    return final.with_name(f"{final.name}.tmp-{os.getpid()}-{token.hex()}")


def _read_tag(f: BinaryIO, size: int) -> str | None:
    """The token in the tag at the end of an index file, or None if it has no tag."""
    if size < _TAG.size:
        return None
    f.seek(size - _TAG.size)
    magic, token = _TAG.unpack(f.read(_TAG.size))
    return token.hex() if magic == _TAG_MAGIC else None


def _file_token(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return _read_tag(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return None


def _write_chunk(f: BinaryIO, chunk: bytes) -> None:
    """Write one chunk of FAISS output; a separate function so tests can make it fail midway."""
    f.write(chunk)


def _stream_index(index: Any, f: BinaryIO) -> int:
    """Stream `faiss.write_index` output into `f` (no in-memory copy); returns its CRC-32."""
    import faiss

    crc = 0

    def sink(chunk: bytes) -> int:
        nonlocal crc
        _write_chunk(f, chunk)
        crc = zlib.crc32(chunk, crc)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(sink)
    faiss.write_index(index, writer)
    del writer  # flushes its buffer through `sink`
    return crc


@dataclass(frozen=True, slots=True)
class _Source:
    """The file a mapped IVF index reads from, held open: `save` copies its first `nbytes`
    (the FAISS part) even after the name was replaced or unlinked."""

    fd: int
    nbytes: int

    @classmethod
    def keep(cls, fd: int, nbytes: int, owner: object, unlink: Path | None = None) -> _Source:
        """Own `fd` until `owner` is collected; then close it (and unlink the file `unlink`)."""
        weakref.finalize(owner, _release, fd, unlink)
        return cls(fd, nbytes)


def _release(fd: int, unlink: Path | None) -> None:
    os.close(fd)
    if unlink is not None:
        with contextlib.suppress(OSError):
            unlink.unlink()


def _copy_source(source: _Source, f: BinaryIO) -> int:
    """Copy a mapped index's FAISS bytes into `f` in 16 MiB chunks; returns their CRC-32."""
    crc, offset = 0, 0
    while offset < source.nbytes:
        chunk = os.pread(source.fd, min(1 << 24, source.nbytes - offset), offset)
        if not chunk:
            raise IndexFileError(f"index source file shrank at byte {offset}")
        _write_chunk(f, chunk)
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
    return crc


def ivf_header(index: Any) -> bytes:
    """`faiss.write_index` output of an IVF index up to its inverted lists (which come last
    for IVF-SQ8 and IVF-PQ), with its ntotal; the index must be private to the caller (its
    lists are detached for a moment)."""
    import faiss

    lists, own = index.invlists, index.own_invlists
    index.own_invlists = False
    index.replace_invlists(None, False)
    try:
        raw = faiss.serialize_index(index).tobytes()
    finally:
        index.replace_invlists(lists, own)
    if raw[-4:] != b"il00":
        raise IndexFileError("unexpected FAISS index layout: inverted lists are not last")
    return raw[:-4]


def write_ivf_header(
    sink: Callable[[bytes], object], nlist: int, code_size: int, sizes: np.ndarray
) -> None:
    """The start of FAISS's "ilar" section: fourcc, nlist, code size and the list sizes, as
    "full" (every size) when more than half the lists are filled, else "sprs" (list, size)
    pairs; the lists' codes and ids follow, list by list."""
    sizes = np.asarray(sizes, np.uint64)
    sink(b"ilar" + struct.pack("<QQ", nlist, code_size))
    nonzero = np.flatnonzero(sizes)
    if len(nonzero) > nlist // 2:
        sink(b"full" + struct.pack("<Q", nlist) + sizes.astype("<u8").tobytes())
    else:
        pairs = np.column_stack([nonzero.astype(np.uint64), sizes[nonzero]]).astype("<u8")
        sink(b"sprs" + struct.pack("<Q", pairs.size) + pairs.tobytes())


def _kept_entries(
    part: Any, lst: int, drop: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, codes) of one list of an InvertedLists, without the sorted ids `drop`; None when
    the list is empty. Views of the part's memory unless something is dropped."""
    import faiss

    size, code_size = part.list_size(lst), part.code_size
    if not size:
        return None
    ids = faiss.rev_swig_ptr(part.get_ids(lst), size)
    codes = faiss.rev_swig_ptr(part.get_codes(lst), size * code_size)
    if drop is not None and len(drop):
        keep = ~np.isin(ids, drop, assume_unique=True)
        if not keep.all():
            return ids[keep], codes.reshape(size, code_size)[keep]
    return ids, codes


def ivf_list_sizes(
    nlist: int,
    parts: Sequence[Any],
    *,
    drops: Sequence[np.ndarray | None] | None = None,
    after_list: Callable[[], object] | None = None,
) -> np.ndarray:
    """Entries per list (uint64, nlist) of the concatenation of `parts` (InvertedLists), each
    part without its sorted `drops` ids; `after_list` is called after each list a drop made
    us read."""
    drops = list(drops) if drops is not None else [None] * len(parts)
    sizes = np.zeros(nlist, np.uint64)
    for part, drop in zip(parts, drops, strict=True):
        if drop is None or not len(drop):
            sizes += np.fromiter((part.list_size(i) for i in range(nlist)), np.uint64, nlist)
            continue
        for lst in range(nlist):
            found = _kept_entries(part, lst, drop)
            sizes[lst] += 0 if found is None else len(found[0])
            if after_list is not None:
                after_list()
    return sizes


def write_ivf_lists(
    sink: Callable[[bytes], object],
    nlist: int,
    code_size: int,
    parts: Sequence[Any],
    *,
    drops: Sequence[np.ndarray | None] | None = None,
    sizes: np.ndarray | None = None,
    after_list: Callable[[], object] | None = None,
) -> None:
    """Write FAISS's "ilar" section (ArrayInvertedLists, as `write_index` lays it out) for the
    concatenation of `parts` (InvertedLists: each list is the parts' lists in order), one list
    at a time: memory is one list, however large the index. Together with `ivf_header` this
    is byte for byte the file `faiss.write_index` writes for the merged index.

    `drops`: per part, sorted ids left out of it (or None); `sizes`: `ivf_list_sizes` of the
    same parts and drops, when the caller already counted them; `after_list` is called after
    each list (a mapped part can let go of the pages read so far)."""
    drops = list(drops) if drops is not None else [None] * len(parts)
    if sizes is None:
        sizes = ivf_list_sizes(nlist, parts, drops=drops, after_list=after_list)
    write_ivf_header(sink, nlist, code_size, sizes)
    for lst in np.flatnonzero(sizes).tolist():
        lists = [
            found
            for part, drop in zip(parts, drops, strict=True)
            if (found := _kept_entries(part, lst, drop)) is not None
        ]
        for _, codes in lists:
            sink(codes.tobytes())
        for ids, _ in lists:
            sink(ids.tobytes())
        if after_list is not None:
            after_list()


def _crc(f: BinaryIO, size: int) -> int:
    f.seek(0)
    crc, left = 0, size
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise(addr, length, advice) where the platform has it (not Windows)."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


_madvise = _libc_madvise()


def _mmap_flags(kind: str) -> int:
    """read_index flags that map `kind`'s data: 0 (a plain read) where this faiss cannot."""
    import faiss

    if kind.startswith("ivf"):
        return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)  # faiss >= 1.10
    return ifc | faiss.IO_FLAG_READ_ONLY if ifc else 0


def _is_kind(index: Any, kind: str) -> bool:
    import faiss

    if kind == "ivfsq8":
        return isinstance(index, faiss.IndexIVFScalarQuantizer)
    if kind == "ivfpq":
        return isinstance(index, faiss.IndexIVFPQ)
    if not isinstance(index, faiss.IndexIDMap2):
        return False
    sub = faiss.downcast_index(index.index)
    return isinstance(sub, faiss.IndexHNSW if kind == "hnsw" else faiss.IndexFlat)


def _is_mapped(index: Any, kind: str) -> bool:
    """Whether FAISS reads `index`'s vectors from a file mapping rather than owned memory."""
    import faiss

    if kind.startswith("ivf"):
        return isinstance(faiss.downcast_InvertedLists(index.invlists), faiss.OnDiskInvertedLists)
    sub = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(sub.storage) if kind == "hnsw" else sub
    codes = getattr(storage, "codes", None)
    return codes is not None and getattr(codes, "is_owned", True) is False


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_pq_m(d: int) -> int:
    """PQ sub-quantizers: 8 dimensions each (96 bytes at d=768), else the largest divisor <= d/8."""
    target = max(1, d // 8)
    return next(m for m in range(target, 0, -1) if d % m == 0)


def _recall_excluding(gt: np.ndarray, got: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Recall@k of `got` against `gt` after dropping each query's own id from both."""
    hits = 0
    for row in range(len(gt)):
        g = gt[row][gt[row] != self_ids[row]][:k]
        r = got[row][(got[row] != self_ids[row]) & (got[row] >= 0)][:k]
        hits += len(np.intersect1d(g, r))
    return hits / (len(gt) * k)
