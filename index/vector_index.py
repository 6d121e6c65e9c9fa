"""A FAISS vector index keyed by the caller's int64 ids, searched by cosine (inner product on
L2-normalised vectors), with in-FAISS id filtering and an atomic single-file format.

faiss is imported inside functions only, so importing vitdex.index stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
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
# Build-time calibration: the smallest nprobe / efSearch whose measured recall@10 reaches this.
RECALL_TARGET = 0.98
CALIBRATION_QUERIES = 200
HNSW_MIN_EF_SEARCH = 64

_MAGIC = b"VITDEXIX"
_END = b"VDXEND01"
_FORMAT = 1
_TRAILER = struct.Struct("<QI8s")  # payload length, crc32 of payload, end magic


def choose_kind(n: int) -> str:
    """The kind "auto" builds for n vectors: exact Flat while it is fast enough, else IVF-SQ8.

    Thresholds come from the measured table in docs/benchmarks.md ("Search").
    """
    if n < 0:
        raise IndexInputError(f"n must be >= 0, got {n}")
    return "flat" if n <= FLAT_MAX_N else AUTO_APPROX_KIND


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


def _write_chunks(f: BinaryIO, chunks: Iterable[bytes]) -> None:
    """Write the parts of an index file; a separate function so tests can make it fail midway."""
    for chunk in chunks:
        f.write(chunk)


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
        if calibrate and n and (
            (kind.startswith("ivf") and nprobe is None) or (kind == "hnsw" and ef_search is None)
        ):
            self._calibrate(x, id_arr, seed)
        log.info(
            "built %s index: %d x %d in %.1fs, params %s",
            kind, n, d, time.perf_counter() - t0, self.params,
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
        """IVF-SQ8 / IVF-PQ built by hand: index_factory's PQ turns on slow polysemous training."""
        import faiss

        n, d = x.shape
        if centroids is not None:
            c = normalize(centroids, d)
            nlist = len(c)
        else:
            c = None
            nlist = int(nlist or default_nlist(n))
        if n == 0 and c is None:
            raise IndexKindError(f"{kind} must be trained on vectors; build it from >= 1 vector")
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivfsq8":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            params: dict[str, Any] = {"nlist": nlist, "nprobe": min(16, nlist)}
        else:
            m = int(m or _default_pq_m(d))
            if d % m:
                raise IndexInputError(f"PQ m={m} must divide the dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            index.do_polysemous_training = False
            index.pq.cp.niter = KMEANS_NITER  # codebooks: 10 k-means rounds, not 25
            params = {"nlist": nlist, "nprobe": min(16, nlist), "m": m, "nbits": 8}
        index.own_fields = True
        quantizer.this.disown()
        rng = np.random.default_rng(seed)
        sample_n = min(n, max(TRAIN_POINTS_PER_LIST * nlist, TRAIN_MIN_SAMPLE))
        sample = x if sample_n == n else x[np.sort(rng.choice(n, sample_n, replace=False))]
        if c is not None:
            quantizer.add(c)  # IndexIVF skips coarse training when the quantizer is full
        else:
            cp = faiss.ClusteringParameters()
            cp.niter = KMEANS_NITER
            cp.seed = seed
            cp.spherical = True
            cp.max_points_per_centroid = 10**9  # we already sampled
            clus = faiss.Clustering(d, nlist, cp)
            clus.train(sample, quantizer)
        if kind == "ivfpq" and len(sample) < 256:
            raise IndexKindError(f"ivfpq needs >= 256 vectors to train its codebooks, got {n}")
        index.train(sample)
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
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(n, min(CALIBRATION_QUERIES, n), replace=False))
        q = x[rows]
        _, gt = faiss.knn(q, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        gt_ids = ids[gt]
        key, top = ("nprobe", self.params["nlist"]) if self.kind != "hnsw" else ("efSearch", n)
        # HNSW starts at 64: build vectors are graph nodes, so they overstate recall for new
        # queries (measured: efSearch=16 gave 0.98 on build vectors, 0.94 on held-out ones).
        value = 1 if key == "nprobe" else min(HNSW_MIN_EF_SEARCH, n)
        measured: dict[int, float] = {}
        while True:
            _, got = self._raw_search(q, k + 1, None, {key: value})
            measured[value] = _recall_excluding(gt_ids, got, ids[rows], k)
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
                self.kind, k, best, RECALL_TARGET, key, chosen,
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
    def nbytes(self) -> int:
        """Size of the FAISS serialisation (the file adds a small header), streamed, not copied."""
        import faiss

        total = 0

        def count(chunk: bytes) -> int:
            nonlocal total
            total += len(chunk)
            return len(chunk)

        writer = faiss.PyCallbackIOWriter(count)
        faiss.write_index(self._index, writer)
        del writer
        return total

    @property
    def centroids(self) -> np.ndarray | None:
        """The IVF coarse centroids (nlist, d), to reuse in a rebuild; None for other kinds."""
        if not self.kind.startswith("ivf"):
            return None
        import faiss

        q = faiss.downcast_index(self._index.quantizer)
        return q.reconstruct_n(0, q.ntotal)

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
        """Add vectors under new ids; an id already present raises IndexInputError."""
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
        self._index.add_with_ids(x, id_arr)
        self._ids_cache = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids (absent ones are ignored); returns how many were removed.

        HNSW graphs cannot drop nodes: raises IndexKindError, rebuild the index instead.
        """
        import faiss

        if self.kind == "hnsw":
            raise IndexKindError("an HNSW index cannot remove vectors; rebuild it without them")
        id_arr = _as_ids(ids)
        if not id_arr.size or not self.ntotal:
            return 0
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
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index atomically: temp file in the same folder, fsync, os.replace.

        A crash at any moment leaves either the previous file or the new one, never a mix.
        Layout: magic, header length, JSON header (kind, dim, params), FAISS bytes, trailer
        (payload length, crc32, end magic).
        """
        import faiss

        path = Path(path)
        header = json.dumps(
            {"format": _FORMAT, "kind": self.kind, "dim": self.dim, "ntotal": self.ntotal,
             "params": self.params, "faiss": faiss.__version__},
            sort_keys=True,
        ).encode()
        payload = faiss.serialize_index(self._index)
        crc = zlib.crc32(payload)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                _write_chunks(
                    f,
                    [_MAGIC, struct.pack("<I", len(header)), header, memoryview(payload),
                     _TRAILER.pack(len(payload), crc, _END)],
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        log.info("saved %s index (%d vectors) to %s", self.kind, self.ntotal, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read a file written by `save`; IndexFileError if missing, truncated or corrupt."""
        import faiss

        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IndexFileError(f"index file not found: {path}") from None
        except OSError as e:
            raise IndexFileError(f"cannot read index file {path}: {e}") from e
        bad = _check_file(data)
        if bad:
            raise IndexFileError(f"corrupt index file {path}: {bad}")
        (hlen,) = struct.unpack_from("<I", data, len(_MAGIC))
        start = len(_MAGIC) + 4 + hlen
        header = json.loads(data[len(_MAGIC) + 4 : start])
        kind, dim, params = header["kind"], int(header["dim"]), header["params"]
        if header.get("format") != _FORMAT or kind not in INDEX_KINDS:
            raise IndexFileError(
                f"unsupported index file {path}: format {header.get('format')}, kind {kind!r}"
            )
        payload = np.frombuffer(data, np.uint8, len(data) - start - _TRAILER.size, start)
        try:
            index = faiss.deserialize_index(payload)
        except RuntimeError as e:
            raise IndexFileError(f"corrupt index file {path}: FAISS cannot read it ({e})") from e
        if index.d != dim or index.ntotal != header["ntotal"]:
            raise IndexFileError(f"index file {path} header does not match its FAISS index")
        return cls(index, kind, dim, params)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a file written by `VectorIndex.save` (kind, dim, ntotal, params),
    read without the FAISS payload, so reporting on a large index stays cheap."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 4)
            if len(head) < len(_MAGIC) + 4 or head[: len(_MAGIC)] != _MAGIC:
                raise IndexFileError(f"corrupt index file {path}: not a vitdex index")
            (hlen,) = struct.unpack_from("<I", head, len(_MAGIC))
            header = json.loads(f.read(hlen))
    except FileNotFoundError:
        raise IndexFileError(f"index file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise IndexFileError(f"cannot read index file {path}: {e}") from e
    return header


def _check_file(data: bytes) -> str | None:
    """Why `data` is not a complete index file, or None."""
    if len(data) < len(_MAGIC) + 4 + _TRAILER.size or not data.startswith(_MAGIC):
        return "not a vitdex index file (bad magic or too short)"
    (hlen,) = struct.unpack_from("<I", data, len(_MAGIC))
    start = len(_MAGIC) + 4 + hlen
    if start + _TRAILER.size > len(data):
        return "truncated header"
    plen, crc, end = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if end != _END or start + plen + _TRAILER.size != len(data):
        return "truncated or trailing bytes"
    if zlib.crc32(memoryview(data)[start : start + plen]) != crc:
        return "checksum mismatch"
    try:
        json.loads(data[len(_MAGIC) + 4 : start])
    except ValueError:
        return "unreadable header"
    return None


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

