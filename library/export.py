"""Export the stored vectors with their images' facts, for tools outside vitdex.

Two layouts, both streamed a page of images at a time (memory is bounded by the page, not by the
library) and both in image-id order:

- parquet: one file, columns path, sha256, width, height, format, taken_at, then one column per
  feature named after it, a fixed-size list of float32.
- npy: the layout clip-retrieval's inference writes and autofaiss reads: per feature
  `OUT/<feature>/emb_NNNN.npy` shards of (rows, dim) float32, and `OUT/metadata/
  metadata_NNNN.parquet` with the same rows in the same order. Shard numbers are zero-padded to
  one width (4 digits, more if needed) so that sorting the names, as autofaiss and clip-retrieval
  do, gives the row order. The metadata's path column is named `image_path`, as clip-retrieval
  names it (its back end shows the image from it).

Vectors are the stored ones, L2-normalised, exactly what search uses. Paths are text: a name
that is not UTF-8 shows its undecodable bytes as U+FFFD (the sha256 still names the content).
The output appears only when complete: it is written under a temporary name beside OUT and
renamed at the end, so an interrupted export leaves no half file at OUT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdex.library.errors import ExportError

if TYPE_CHECKING:
    from vitdex.library.library import Library
    from vitdex.storage import ExportPage, StoredSpec

log = logging.getLogger(__name__)

FORMATS = ("parquet", "npy")
SHARD_ROWS = 100_000  # npy rows per shard: 300 MB of 768-d float32, one autofaiss batch
PAGE = 5_000  # images read from the store (and written as one parquet row group) at a time
INSTALL_HINT = "vitdex export needs pyarrow: pip install 'vitdex[export]'"

Progress = Callable[[int], None]  # called with the number of rows just written


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote: its files (under `out` for npy), in the order a reader takes them."""

    out: Path
    format: str
    features: tuple[str, ...]
    dims: dict[str, int]
    rows: int
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "format": self.format, "features": list(self.features),
            "dims": self.dims, "rows": self.rows, "files": self.files,
        }  # fmt: skip


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(INSTALL_HINT) from None
    return pa, pq


def export(
    library: Library,
    out: str | Path,
    *,
    features: Sequence[str] = (),
    under: str | Path | None = None,
    format: str = "parquet",
    page: int = PAGE,
    shard_rows: int = SHARD_ROWS,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the vectors of `features` (default: every stored feature) of the images below
    `under` (default: all) to `out`; see the module docstring for the layouts."""
    from vitdex.storage import canonical

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    pa, pq = _pyarrow()
    spec = library.require_spec()
    features = tuple(dict.fromkeys(features)) or tuple(library.spec.features)
    for feature in features:
        library.check_feature(feature)
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    _check_free(out, format)
    folder = None if under is None else canonical(under)
    rows = library.store.export_rows
    meta = _provenance(spec, features)
    writer = _write_parquet if format == "parquet" else _write_npy
    tmp = out.with_name(f".{out.name}.vitdex-tmp-{os.getpid()}")
    _remove(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with library.store.snapshot():  # the count and every page see one moment
            total = rows.count(spec, features, under=folder)
            dims = {f: rows.dim(spec, f) or spec.dim for f in features}
            pages = rows.pages(spec, features, under=folder, page=page)
            files = writer(pa, pq, tmp, pages, total, dims, meta, shard_rows, progress)
        if format == "npy" and out.is_dir():
            out.rmdir()  # an empty folder, checked above
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    log.info("exported %d images (%s) to %s", total, ", ".join(features), out)
    return ExportReport(out, format, features, dims, total, [str(out / f) for f in files])


def _check_free(out: Path, format: str) -> None:
    if format == "npy" and out.is_dir() and not any(out.iterdir()):
        return
    if os.path.lexists(out):
        raise ExportError(f"{out} already exists: remove it or choose another output path")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _provenance(spec: StoredSpec, features: Sequence[str]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: which model and spec made the vectors."""
    data = {"model_id": spec.model_id, "revision": spec.revision, "spec_key": spec.key,
            "features": list(features), "normalized": "l2"}  # fmt: skip
    return {b"vitdex": json.dumps(data, sort_keys=True).encode()}


def _schema(pa, dims: dict[str, int], meta: dict[bytes, bytes], path_column: str, vectors: bool):
    fields = [
        pa.field(path_column, pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("format", pa.string()),
        pa.field("taken_at", pa.string()),
    ]
    if vectors:
        fields += [pa.field(f, pa.list_(pa.float32(), d), nullable=False) for f, d in dims.items()]
    return pa.schema(fields, metadata=meta)


def _table(pa, schema, page: ExportPage, start: int, stop: int, vectors: bool):
    columns = [
        pa.array(page.paths[start:stop], pa.string()),
        pa.array(page.sha256[start:stop], pa.string()),
        pa.array(page.width[start:stop], pa.int32()),
        pa.array(page.height[start:stop], pa.int32()),
        pa.array(page.format[start:stop], pa.string()),
        pa.array(page.taken_at[start:stop], pa.string()),
    ]
    if vectors:
        for matrix in page.vectors.values():  # in the schema's order: the features asked
            part = matrix[start:stop]
            columns.append(
                pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), part.shape[1])
            )
    return pa.Table.from_arrays(columns, schema=schema)


def _options(dims: dict[str, int]) -> dict[str, Any]:
    """Vectors are written plain: random floats neither compress nor fit a dictionary, and
    trying costs time and a copy of the row group."""
    return {
        "use_dictionary": ["format", "taken_at"],
        "compression": {name: "none" if name in dims else "snappy"
                        for name in ("path", "image_path", "sha256", "width", "height", "format",
                                     "taken_at", *dims)},
        "write_statistics": ["path", "image_path", "width", "height", "format", "taken_at"],
    }  # fmt: skip


def _check_dims(page: ExportPage, dims: dict[str, int]) -> None:
    for name, matrix in page.vectors.items():
        if matrix.shape[1] != dims[name]:
            raise ExportError(
                f"stored {name} vectors have {matrix.shape[1]} values, expected {dims[name]}"
            )


def _write_parquet(pa, pq, tmp, pages, total, dims, meta, shard_rows, progress) -> list[str]:
    """One file; one row group per page."""
    schema = _schema(pa, dims, meta, "path", vectors=True)
    with pq.ParquetWriter(tmp, schema, **_options(dims)) as writer:
        for page in pages:
            _check_dims(page, dims)
            writer.write_table(_table(pa, schema, page, 0, len(page), vectors=True))
            if progress:
                progress(len(page))
    return [""]


def _write_npy(pa, pq, tmp, pages, total, dims, meta, shard_rows, progress) -> list[str]:
    """Shards of `shard_rows` rows: the npy header carries the shard's final shape (known from the
    count), then each page's rows are appended, so no shard is ever held in memory whole."""
    shards = -(-total // shard_rows)
    width = max(4, len(str(max(shards - 1, 0))))
    schema = _schema(pa, dims, meta, "image_path", vectors=False)
    for name in (*dims, "metadata"):
        (tmp / name).mkdir(parents=True)
    files: list[str] = []
    shard = _Shard(pa, pq, tmp, schema, dims, width, files)
    written = 0
    try:
        for page in pages:
            _check_dims(page, dims)
            start = 0
            while start < len(page):
                number, offset = divmod(written, shard_rows)
                if offset == 0:
                    shard.open(number, min(shard_rows, total - written))
                stop = min(len(page), start + shard_rows - offset)
                shard.write(page, start, stop)
                written += stop - start
                start = stop
            if progress:
                progress(len(page))
    finally:
        shard.close()
    if written != total:  # the count and the pages come from one snapshot: never expected
        raise ExportError(f"export read {written} rows, expected {total}")
    return files


class _Shard:
    """The open files of one npy shard: one .npy per feature and its metadata parquet."""

    def __init__(self, pa, pq, folder: Path, schema, dims: dict[str, int], width: int,
                 files: list[str]):  # fmt: skip
        self.pa, self.pq, self.folder, self.schema = pa, pq, folder, schema
        self.dims, self.width, self.files = dims, width, files
        self.npy: dict[str, Any] = {}
        self.metadata = None

    def open(self, number: int, rows: int) -> None:
        self.close()
        key = f"{number:0{self.width}d}"
        for name, dim in self.dims.items():
            relative = f"{name}/emb_{key}.npy"
            handle = open(self.folder / relative, "wb")  # noqa: SIM115 (closed in close())
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(handle, header)
            self.npy[name] = handle
            self.files.append(relative)
        relative = f"metadata/metadata_{key}.parquet"
        self.metadata = self.pq.ParquetWriter(self.folder / relative, self.schema, **_options({}))
        self.files.append(relative)

    def write(self, page: ExportPage, start: int, stop: int) -> None:
        for name, handle in self.npy.items():
            handle.write(np.ascontiguousarray(page.vectors[name][start:stop], "<f4").data)
        self.metadata.write_table(_table(self.pa, self.schema, page, start, stop, vectors=False))

    def close(self) -> None:
        for handle in self.npy.values():
            handle.close()
        self.npy = {}
        if self.metadata is not None:
            self.metadata.close()
            self.metadata = None
