"""Ingest, stage 2: embed. An executor turns embed jobs into vectors; the commit stage does not
care where that happens. `LocalExecutor` runs the embedder's thread pipeline in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vitdex.embedder import Embedder, EmbedResult
    from vitdex.library.plan import EmbedJob


class Executor(Protocol):
    def embed(self, jobs: Iterable[EmbedJob]) -> Iterator[EmbedResult[EmbedJob]]:
        """One result per job (vectors and image facts, or an error), each with its job."""
        ...


@dataclass
class LocalExecutor:
    """Decode in threads, the model in this process; results in job order."""

    embedder: Embedder
    batch_size: int | None = None
    workers: int | None = None

    def embed(self, jobs: Iterable[EmbedJob]) -> Iterator[EmbedResult[EmbedJob]]:
        return self.embedder.embed_files(
            jobs, lambda job: Path(job.path), batch_size=self.batch_size, workers=self.workers
        )
