"""Ingest, stage 2 on a Ray cluster: the embed stage as a Ray Data pipeline (`--engine ray`).

The driver (this process) plans and commits as with the local engine; only the jobs' paths go to
Ray. Ray Data splits them into batches and hands each to an actor of a pool; each actor loads the
library's own model once (the stored spec: model, revision, preprocessing, features, runtime),
then reads, decodes and embeds its batches with the same code as the local engine (decode threads
beside the forward), so the vectors and labels match. Results stream back batch by batch as they
finish, and the commit stage writes them as they come: a crash loses at most what was not
committed, and the next ingest plans again and embeds only what is missing.

An actor whose loaded spec key differs from the library's (another model in the folder on that
node, another version of a dependency that changes preprocessing) is refused: the run stops with
one line naming both keys. Every worker must read the files at the driver's paths (a shared
filesystem) and the model at the spec's path or hub cache.

Ray actors that die (a killed process, a lost node) are restarted by Ray and their unfinished
batch is retried (`max_restarts=-1`; Ray Data then sets `max_task_retries=-1`). A run that fails
anyway keeps what it committed; the next ingest embeds the rest.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdex.library.errors import EngineError, SpecMismatchError

if TYPE_CHECKING:
    from vitdex.embedder import EmbedResult
    from vitdex.library.library import Library
    from vitdex.library.plan import EmbedJob

log = logging.getLogger(__name__)

ROWS_PER_TASK = 64
"""Most jobs per Ray Data batch: what one actor call embeds and what comes back at once."""
MIN_ROWS_PER_TASK = 16  # a CPU forward batch: smaller tasks pay the call for little work
TASKS_PER_ACTOR = 4
CRASH_MARKER_ENV = "VITDEX_RAY_CRASH_MARKER"
"""Test hook: when this names an existing file, an actor removes it and exits on its 2nd batch
(once in the whole run), as a killed worker would."""
_VECTOR_PREFIX = "vector_"
CONNECT_TIMEOUT_S = 10  # to reach a cluster's head; Ray itself retries for minutes


@dataclass
class RayExecutor:
    """Embed on a Ray cluster: `address` as `ray.init` takes it ("auto", "ray://head:10001",
    "head:6379"); None starts a local Ray instance unless this process is already connected.

    `actors` is the size of the actor pool (default: one per node, each with the node's CPUs);
    `batch_size` is the images per model forward inside an actor (default: the embedder's);
    `device` is where each actor runs its model ("cuda" gives each actor one GPU); `restarts`
    is how often Ray restarts a dead actor and retries its batch (-1: always; 0: the run fails,
    and the next ingest embeds what was not committed).
    """

    library: Library
    address: str | None = None
    actors: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    rows_per_task: int = ROWS_PER_TASK
    restarts: int = -1

    def embed(self, jobs: Iterable[EmbedJob]) -> Iterator[EmbedResult[EmbedJob]]:
        from vitdex.embedder import EmbedResult, ImageInfo
        from vitdex.embedder.head import Label

        ray = _import_ray()
        spec = self.library.require_spec()
        jobs = list(jobs)
        if not jobs:
            return
        started = not ray.is_initialized()
        if started:
            _check_reachable(self.address or os.environ.get("RAY_ADDRESS"))
            try:
                ray.init(address=self.address, include_dashboard=False, configure_logging=False,
                         log_to_driver=False)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a new local instance"
                raise EngineError(f"cannot start Ray on {where}: {exc}") from None
        try:
            dataset = self._pipeline(ray, jobs, spec.data, spec.key)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for text in batch["refused"]:
                    if text:
                        refusal = json.loads(text)
                        error = SpecMismatchError if refusal["spec"] else EngineError
                        raise error(refusal["message"])
                vectors = {
                    name[len(_VECTOR_PREFIX) :]: np.asarray(batch[name], dtype=np.float32)
                    for name in batch
                    if name.startswith(_VECTOR_PREFIX)
                }
                for row, (index, meta) in enumerate(zip(batch["index"], batch["meta"],
                                                        strict=True)):  # fmt: skip
                    facts = json.loads(meta)
                    job = jobs[int(index)]
                    if facts["error"] is not None:
                        yield EmbedResult(item=job, vectors=None, info=None, error=facts["error"])
                        continue
                    labels = facts["labels"]
                    yield EmbedResult(
                        item=job,
                        vectors={name: array[row].copy() for name, array in vectors.items()},
                        info=ImageInfo(**facts["info"]),
                        labels=None if labels is None else tuple(Label(*pair) for pair in labels),
                    )
        except ray.exceptions.RayError as exc:  # what was committed stays; a rerun resumes
            reason = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
            raise EngineError(
                f"the Ray embed stage failed ({type(exc).__name__}: {reason}); the batches"
                " committed so far are kept, and `vitdex ingest` again embeds the rest"
            ) from exc
        finally:
            if started:
                ray.shutdown()

    def _pipeline(self, ray: Any, jobs: list[EmbedJob], spec_data: dict, key: str) -> Any:
        """Jobs (index and path bytes, so non-UTF-8 names survive Arrow) -> an actor pool."""
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # the CLI shows its own bar
        items = [{"index": i, "path": os.fsencode(job.path)} for i, job in enumerate(jobs)]
        actors, cpus = self._pool_size(ray)
        gpus = 1 if self.device.startswith("cuda") else 0
        cache = self.library.folder / "models"
        # One block per task, so results stream back. At least 4 tasks per actor when there are
        # enough jobs, so no actor is left with a long tail while the others idle.
        spread = -(-len(items) // (TASKS_PER_ACTOR * actors))
        per_task = max(1, min(self.rows_per_task, max(MIN_ROWS_PER_TASK, spread)))
        dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_task))
        return dataset.map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "spec_data": spec_data,
                "key": key,
                "cache_dir": str(cache),
                "device": self.device,
                "batch_size": self.batch_size,
            },
            batch_size=per_task,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=self.restarts,
        )

    def _pool_size(self, ray: Any) -> tuple[int, float]:
        """(actors, CPUs per actor): by default one actor per node with that node's CPUs."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes] or [1.0]
        actors = self.actors or len(nodes) or 1
        total = sum(node_cpus)
        cpus = max(1.0, min(max(node_cpus), float(int(total // actors))))
        return actors, cpus


class EmbedActor:
    """One Ray actor: the library's model loaded once, then batches of paths -> vectors."""

    def __init__(
        self,
        spec_data: dict,
        key: str,
        cache_dir: str | None,
        device: str,
        batch_size: int | None,
    ) -> None:
        import ray

        from vitdex.embedder import Embedder, EmbeddingSpec, runtime_option
        from vitdex.library.library import _is_commit

        self.batch_size = batch_size
        self.batches = 0
        self.refused = ""  # JSON {"spec": bool, "message": str} when this actor cannot embed
        self.embedder: Embedder | None = None
        spec = EmbeddingSpec.from_dict(spec_data)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        self.workers = max(1, int(cpus or 1) // 4)
        where = f"ray worker on {socket.gethostname()}"
        revision = spec.revision if _is_commit(spec.revision) else None
        cache = cache_dir if cache_dir and os.path.isdir(cache_dir) else None
        try:
            self.embedder = Embedder.load(
                spec.model_id, device=device, revision=revision, cache_dir=cache,
                runtime=runtime_option(spec.runtime),
                draft=bool(spec.preprocessing.get("draft", True)),
                features=list(spec.features) or None,
                threads=max(1, int(cpus)) if cpus else None,
            )  # fmt: skip
        except Exception as exc:  # reported on the driver as one line, never retried forever
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            message = f"{where} cannot load {spec.model_id}: {reason}"
            self.refused = json.dumps({"spec": False, "message": message})
            return
        if self.embedder.spec.key != key:
            message = (
                f"{where} refused: it loads {spec.model_id} as spec {self.embedder.spec.key},"
                f" but the library holds spec {key}; make the model and vitdex the same on"
                " every node"
            )
            self.refused = json.dumps({"spec": True, "message": message})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        _crash_hook(self.batches)
        n = len(batch["index"])
        if self.refused or self.embedder is None:
            return {"index": batch["index"], "meta": np.array(['{"error": null}'] * n),
                    "refused": np.array([self.refused] * n)}  # fmt: skip
        paths = [Path(os.fsdecode(bytes(raw))) for raw in batch["path"]]
        dims = self.embedder.spec.feature_dims
        vectors = {name: np.zeros((n, dim), np.float32) for name, dim in dims.items()}
        meta = []
        results = self.embedder.embed_files(
            range(n), lambda i: paths[i], batch_size=self.batch_size, workers=self.workers
        )
        for result in results:
            if result.ok:
                for name, vector in result.vectors.items():
                    vectors[name][result.item] = vector
            info = asdict(result.info) if result.info is not None else None
            labels = None if result.labels is None else [[x.label, x.score] for x in result.labels]
            facts = {"error": result.error, "info": info, "labels": labels}
            meta.append(json.dumps(facts))  # ASCII (escaped), so Arrow takes any name
        return {
            "index": batch["index"],
            "meta": np.array(meta),
            "refused": np.array([""] * n),
            **{_VECTOR_PREFIX + name: array for name, array in vectors.items()},
        }


def _crash_hook(batches: int) -> None:
    marker = os.environ.get(CRASH_MARKER_ENV)
    if marker and batches == 2:
        try:
            os.unlink(marker)
        except FileNotFoundError:
            return
        log.warning("test hook: ray actor exits on its batch %d", batches)
        os._exit(1)


def _check_reachable(address: str | None) -> None:
    """Fail at once, in one line, when nothing answers at a "host:port" or "ray://host:port"
    address ("auto" and None are Ray's to resolve: it fails fast when it finds no cluster)."""
    if not address or "://" in address.removeprefix("ray://"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is `ray start"
            " --head` running there, and is the port open from this machine?"
        ) from None


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
        import ray.exceptions  # noqa: F401
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray Data ({exc}); install it with `pip install 'vitdex[ray]'`"
        ) from None
    return ray
