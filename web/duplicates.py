"""Duplicate groups for the gallery, computed once per library generation in the background.

Finding duplicates reads every vector (minutes at a million images), so a GET never computes
them: it starts a job (or finds one running) and shows "computing…"; the finished result is
served until the generation moves. Jobs run one at a time, on their own Library over the same
folder, so they share no index, session or lock with the pages served meanwhile.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from vitdex.library import Library, display
from vitdex.library.errors import VitdexError
from vitdex.web.tiles import Tile, tile

log = logging.getLogger(__name__)

KEPT = 8  # (feature, threshold) results kept; the oldest finished one goes first


@dataclass(frozen=True, slots=True)
class Group:
    kind: str
    keep: str
    tiles: list[Tile]


@dataclass
class Job:
    generation: int
    done: threading.Event = field(default_factory=threading.Event)
    groups: list[Group] = field(default_factory=list)
    threshold: float | None = None
    error: str | None = None


class DuplicateJobs:
    """One job per (feature, threshold) and generation."""

    def __init__(self, folder: Path, database: str | None = None):
        self.folder, self.database = folder, database
        self._jobs: dict[tuple[str, float | None], Job] = {}
        self._lock = threading.Lock()  # guards _jobs
        self._one_at_a_time = threading.Lock()

    def get(self, generation: int, feature: str, threshold: float | None) -> Job:
        """The job for this generation: finished, running, or started now."""
        key = (feature, threshold)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.generation == generation:
                return job
            job = self._jobs[key] = Job(generation)
            self._forget_old()
        threading.Thread(
            target=self._run, args=(job, feature, threshold), name="vitdex-duplicates", daemon=True
        ).start()
        return job

    def _forget_old(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.done.is_set()]
        while len(self._jobs) > KEPT and finished:
            del self._jobs[finished.pop(0)]

    def _run(self, job: Job, feature: str, threshold: float | None) -> None:
        try:
            from vitdex.library.dupes import find_duplicates

            with self._one_at_a_time, Library.open(self.folder, database=self.database) as library:
                found = find_duplicates(library, threshold=threshold, feature=feature)
                job.threshold = found.get("threshold")
                job.groups = groups_of(library, found["groups"])
        except VitdexError as exc:
            job.error = str(exc)
        except Exception as exc:  # a bug must not leave the page "computing…" forever
            log.exception("finding duplicates failed")
            job.error = f"finding duplicates failed: {type(exc).__name__}: {exc}"
        finally:
            job.done.set()


def tiles_of(library: Library, hits: list[dict]) -> list[Tile]:
    """Tiles for search hits or duplicate members (dicts with "path", perhaps "id" and "score")
    that are still stored."""
    by_path = library.images_at([hit["path"] for hit in hits])
    tiles = []
    for hit in hits:
        image = by_path.get(hit["path"])
        if image is not None:
            tiles.append(tile(image, hit.get("score")))
    return tiles


def groups_of(library: Library, groups: list[dict]) -> list[Group]:
    return [
        Group(group["kind"], display(group["keep"]), tiles_of(library, group["members"]))
        for group in groups
    ]
