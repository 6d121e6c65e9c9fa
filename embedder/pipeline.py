"""Streaming decode -> preprocess -> forward, with decode in threads overlapping the model.

Items are pulled lazily and only a bounded number are in flight, so a million-file ingest uses
the memory of a few batches. PIL releases the GIL while decoding and resizing, so threads are
enough to keep the model fed.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from vitdex.embedder.decode import ImageInfo, decode_image
from vitdex.embedder.errors import DecodeError

if TYPE_CHECKING:
    from vitdex.embedder.head import Label
    from vitdex.embedder.model import Embedder

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EmbedResult(Generic[T]):
    """One input item and either its vectors (feature -> (dim,) float32) or an error message."""

    item: T
    vectors: dict[str, np.ndarray] | None
    info: ImageInfo | None
    error: str | None = None
    labels: tuple[Label, ...] | None = None
    """The checkpoint's top labels, best first; None when it has no classification head."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class EmbeddedBatch:
    """One forward's output: feature -> (n, dim) normalised float32, and each image's top labels
    (None when the checkpoint has no classification head)."""

    vectors: dict[str, np.ndarray]
    labels: list[tuple[Label, ...]] | None = None


def cpu_split(cores: int | None = None) -> tuple[int, int]:
    """(torch threads, decode workers) for a CPU-only run.

    The ViT forward dominates on CPU (draft-decoded JPEGs are cheap), so torch keeps most
    cores; decode gets about a quarter, at least one. On 2 cores: 2 torch threads, 1 worker
    (the worker mostly waits on I/O and libjpeg, briefly sharing a core).
    """
    cores = cores or os.cpu_count() or 1
    workers = max(1, cores // 4)
    threads = cores if cores <= 4 else cores - workers
    return threads, workers


def _prepare(embedder: Embedder, path: Path) -> tuple[np.ndarray, ImageInfo]:
    image, info = decode_image(path, embedder.preprocessor.target_size, draft=embedder.draft)
    return embedder.preprocessor(image), info


def stream_embeddings(
    embedder: Embedder,
    items: Iterable[T],
    path_of: Callable[[T], Path] | None,
    *,
    batch_size: int,
    workers: int,
    top: int,
) -> Iterator[EmbedResult[T]]:
    """Yield one EmbedResult per item, in input order; see Embedder.embed_files."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    get_path: Callable[[T], Path] = path_of or (lambda item: Path(item))  # type: ignore[arg-type]
    source = iter(items)
    # Items held at once: the batch being embedded, the next one decoding, slack for workers.
    max_in_flight = 2 * batch_size + workers
    pending: deque[tuple[T, Future | str]] = deque()
    exhausted = False
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vitdex-decode")

    def refill(held: int = 0) -> None:
        """Pull items until `held` (the batch being embedded) + pending reach the bound."""
        nonlocal exhausted
        while not exhausted and held + len(pending) < max_in_flight:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                return
            try:
                path = Path(get_path(item))
            except Exception as exc:  # a bad item must not stop the stream
                pending.append((item, f"cannot get a path for this item: {exc}"))
                continue
            pending.append((item, pool.submit(_prepare, embedder, path)))

    try:
        refill()
        while pending:
            batch: list[tuple[T, np.ndarray | None, ImageInfo | None, str | None]] = []
            while pending and len(batch) < batch_size:
                item, job = pending.popleft()
                if isinstance(job, str):
                    batch.append((item, None, None, job))
                    continue
                try:
                    pixels, info = job.result()
                    batch.append((item, pixels, info, None))
                except DecodeError as exc:
                    batch.append((item, None, None, exc.reason))
                except Exception as exc:
                    log.warning("unexpected error preparing %r: %s", item, exc, exc_info=True)
                    batch.append((item, None, None, f"{type(exc).__name__}: {exc}"))
            refill(len(batch))  # workers decode the next batch while the model runs this one
            good = [row[1] for row in batch if row[1] is not None]
            embedded = embedder.embed_batch(np.stack(good), top=top) if good else None
            j = 0
            for item, pixels, info, error in batch:
                if pixels is None:
                    yield EmbedResult(item=item, vectors=None, info=None, error=error)
                    continue
                yield EmbedResult(
                    item=item,
                    vectors={name: array[j] for name, array in embedded.vectors.items()},
                    info=info,
                    error=None,
                    labels=embedded.labels[j] if embedded.labels is not None else None,
                )
                j += 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
