"""A library: one folder holding the database (through the Store) and the FAISS files (through
the IndexManager), bound to one embedding spec. Every CLI verb and gallery page is a method here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from vitdex.embedder.head import TOP_LABELS
from vitdex.library.config import resolve_database, resolve_library_path, resolve_model
from vitdex.library.errors import LibraryError, NotFoundError, SpecMismatchError
from vitdex.library.index_manager import IndexManager
from vitdex.library.lock import shared_write_lock, write_lock
from vitdex.storage import (
    FailedFile,
    Store,
    StoredImage,
    StoredPrediction,
    StoredSpec,
    TagCount,
    canonical,
    open_regular,
)

if TYPE_CHECKING:
    from vitdex.embedder import Embedder, EmbeddingSpec
    from vitdex.embedder.head import Label
    from vitdex.index.vector_index import VectorIndex
    from vitdex.library.executor import Executor
    from vitdex.library.export import ExportReport
    from vitdex.library.ingest import IngestReport, Progress
    from vitdex.library.labels import ImageLabels

log = logging.getLogger(__name__)


class Library:
    """Open with `Library.open(folder)`; every other part of the API hangs off it."""

    def __init__(self, folder: Path, *, database: str | None = None, create: bool = False):
        self.folder = Path(folder)
        self.database = database  # a PostgreSQL URL, or None: the SQLite file in `folder`
        self.store = Store(self.folder, database=database, create=create)
        self.indexes = IndexManager(self.store, self.folder / "index")
        self._embedder: Embedder | None = None
        self._writing = False

    @classmethod
    def open(
        cls, folder: str | Path | None = None, *, database: str | None = None, create: bool = False
    ) -> Library:
        """Open the library at `folder` (else $VITDEX_LIBRARY, else the platform default), its
        metadata and vectors in the PostgreSQL database at the URL `database` (else
        $VITDEX_DATABASE_URL, else the SQLite file in `folder`)."""
        return cls(resolve_library_path(folder), database=resolve_database(database),
                   create=create)  # fmt: skip

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read snapshot: every call on this library inside sees the database at one moment
        (a gallery page and its counts agree, and share one transaction)."""
        with self.store.snapshot():
            yield

    @contextmanager
    def writing(self, *, wait: bool = False) -> Iterator[None]:
        """The library's write lock, held by every writer (never needed to read). Reentrant
        within this Library: a writer may call another writer (probe train ingests)."""
        self.store.check_writable()
        if self._writing:
            yield
            return
        # A shared database: one writer across every machine, then this folder's own lock (its
        # index files, which a reader here may save).
        shared = shared_write_lock(self.store, wait=wait) if self.store.shared else nullcontext()
        with shared, write_lock(self.folder, wait=wait):
            self._writing = True
            try:
                yield
            finally:
                self._writing = False

    # --- spec ---
    @property
    def spec(self) -> EmbeddingSpec | None:
        from vitdex.embedder import EmbeddingSpec

        row = self.store.spec()
        return None if row is None else EmbeddingSpec.from_dict(row.data)

    def require_spec(self) -> StoredSpec:
        row = self.store.spec()
        if row is None:
            raise LibraryError(f"library {self.folder} is empty: run `vitdex ingest PATH` first")
        return row

    def check_feature(self, feature: str) -> None:
        """Refuse a feature the library does not store, saying why and how to get it."""
        from vitdex.embedder.errors import FeatureError
        from vitdex.embedder.features import is_feature_name

        spec = self.spec
        if spec is None or feature in spec.features:
            return
        stores = ", ".join(spec.features)
        if feature == "pooler":
            raise FeatureError(
                f"feature 'pooler' is not available: {spec.model_id} has no trained pooler"
                " weights (it is a classification checkpoint, so its pooler would be random);"
                " use cls or mean"
            )
        if not is_feature_name(feature):
            raise FeatureError(f"unknown feature {feature!r}; this library stores {stores}")
        wanted = ",".join((*spec.features, feature))
        raise FeatureError(
            f"library {self.folder} does not store {feature} (it stores {stores}): features are"
            " chosen when a library is created, and a library never mixes specs. To add it,"
            f" re-embed into a new library: `vitdex ingest PATH --library NEW_FOLDER --features"
            f" {wanted}`"
        )

    def bind_spec(self, spec: EmbeddingSpec) -> StoredSpec:
        """Bind an empty library to `spec`, or check that `spec` makes the library's vectors."""
        from vitdex.embedder import EmbeddingSpec, runtime_option

        row = self.store.bind_spec(spec.key, spec.model_id, spec.revision, spec.dim,
                                   spec.to_dict())  # fmt: skip
        if row.key == spec.key:
            return row
        bound = EmbeddingSpec.from_dict(row.data)
        if not row.data.get("weights") and _same_vectors_legacy(bound, spec):
            # A library made before specs were keyed on the weights: same model, same vectors.
            return self.store.update_spec(row.id, spec.key, spec.revision, spec.to_dict())
        if bound.runtime != spec.runtime:
            raise SpecMismatchError(
                f"library {self.folder} holds vectors made with --runtime"
                f" {runtime_option(bound.runtime)}, not {runtime_option(spec.runtime)}; vectors"
                " of two runtimes never mix. Drop --runtime to use the library's own, or start a"
                " new library with `--library NEW_FOLDER` (or VITDEX_LIBRARY)."
            )
        raise SpecMismatchError(
            f"library {self.folder} holds vectors of {row.model_id} (spec {row.key}), not of"
            f" {spec.model_id} (spec {spec.key}): the weights or preprocessing differ, and vectors"
            " of two specs never mix. Start a new library for this model with `--library"
            " NEW_FOLDER` (or VITDEX_LIBRARY), or drop --model to use the library's own."
        )

    def embedder(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        runtime: str | None = None,
        features: Iterable[str] | None = None,
    ) -> Embedder:
        """The embedder for this library's spec (loaded once, lazily: it imports torch).

        With no `model`, the library's own model at its own revision is loaded; `runtime`
        ("fp32" or "int8") defaults to the library's, and the int8 model is cached in models/.
        `features` choose a new library's features (default: the checkpoint's usual ones); a
        library that has a spec makes its own, and refuses any it does not store.
        """
        if self._embedder is None:
            from vitdex.embedder import Embedder, runtime_option

            row = self.store.spec()
            if row is not None:
                for feature in features or ():
                    self.check_feature(feature)
                features = row.data.get("features") or None
            source = resolve_model(model, row.model_id if row else None)
            own = row is not None and source == row.model_id
            revision = row.revision if own and _is_commit(row.revision) else None
            runtime = runtime or (runtime_option(row.data.get("runtime", "")) if row else "fp32")
            cache = self.folder / "models" if not self.read_only else None
            self._embedder = Embedder.load(
                source,
                device=device,
                runtime=runtime,
                cache_dir=cache,
                revision=revision,
                features=features,
            )
            if not self.read_only:
                self.bind_spec(self._embedder.spec)
            elif row is not None and row.key != self._embedder.spec.key:
                raise SpecMismatchError(
                    f"library {self.folder} holds vectors of spec {row.key}, not"
                    f" {self._embedder.spec.key} ({source})"
                )
        return self._embedder

    # --- indexes ---
    def index(self, feature: str = "cls") -> VectorIndex:
        """The feature's FAISS index, current with the database."""
        self.check_feature(feature)
        return self.indexes.current(feature)

    def rebuild_index(self, feature: str, kind: str = "auto", *, wait: bool = False) -> VectorIndex:
        """Rebuild from the database with `kind`, which becomes the feature's kind once built."""
        self.check_feature(feature)
        with self.writing(wait=wait):
            return self.indexes.rebuild(feature, kind)

    def evaluate_index(self, feature: str, *, sample: int = 1000, k: int = 10) -> dict:
        """recall@k of the feature's current index against exact search over the stored vectors,
        streamed in pages (memory: one page and the queries, not every vector)."""
        from vitdex.index.evaluate import recall_at_k_paged

        spec = self.require_spec()
        with self.store.snapshot():
            index = self.index(feature)
            all_ids = self.store.vectors.image_ids(spec, feature)
            if not len(all_ids):
                raise LibraryError("the library holds no images: there is nothing to evaluate")
            n = min(sample, len(all_ids))
            rows = np.sort(np.random.default_rng(0).choice(len(all_ids), n, replace=False))
            _, queries = self.store.vectors.of_image_ids(spec, feature, all_ids[rows])
            pages = ((p.ids, p.vectors) for p in self.store.vectors.iter_pages(spec, feature))
            recall = recall_at_k_paged(index, queries, pages, k=k)
        return {
            "feature": feature, "kind": index.kind, "vectors": index.ntotal, "k": k,
            "sample": n, "recall": recall, "params": index.params,
        }  # fmt: skip

    # --- the operations ---
    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        model: str | None = None,
        device: str = "auto",
        runtime: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        commit_every: int = 64,
        dry_run: bool = False,
        wait: bool = False,
        prune: bool = False,
        index_features: Iterable[str] = ("cls",),
        features: Iterable[str] | None = None,
        progress: Progress | None = None,
        executor: Executor | None = None,
    ) -> IngestReport:
        """Add, update, move and remove the images below `paths` (see vitdex.library.ingest).

        `model`/`device`/`runtime` choose the embedder (default: the library's own); `dry_run`
        reports the plan and changes nothing; `wait` waits for another writer instead of failing;
        `prune` removes gone images even when more than half of a folder's would go (else they
        are held back, see `IngestReport.held_back`); `index_features` are checked against the
        library's features before anything is written. `features` choose what a new library
        stores (see vitdex.embedder.features); an existing one refuses any it does not store.
        `executor` runs the embed stage elsewhere (`RayExecutor`); default: this process's model
        and threads.
        """
        from vitdex.library.ingest import ingest

        return ingest(
            self, paths, model=model, device=device, runtime=runtime, batch_size=batch_size,
            workers=workers, commit_every=commit_every, dry_run=dry_run, wait=wait, prune=prune,
            index_features=index_features, features=features, progress=progress,
            executor=executor,
        )  # fmt: skip

    def forget(self, paths: Iterable[str | Path], *, wait: bool = False) -> int:
        """Remove the images at or below `paths`, whether or not they still exist (a deleted
        folder, a drive given away); how many images were removed."""
        from vitdex.library.ingest import forget

        return forget(self, paths, wait=wait)

    def search(
        self,
        query: str | Path | None,
        *,
        k: int = 10,
        feature: str = "cls",
        min_score: float | None = None,
        under: str | Path | None = None,
        allowed_ids: np.ndarray | None = None,
        model: str | None = None,
        device: str = "auto",
        runtime: str | None = None,
        tag: str | None = None,
    ) -> dict:
        """The k images most similar to `query` by cosine, best first, the query left out.

        `under` (a folder), `allowed_ids` and `tag` (images whose top label is it, any case)
        restrict the candidates inside FAISS, so k results come back whenever k candidates
        exist; `min_score` drops results below a cosine. With `tag` and no `query`: the images
        whose top label is `tag`, most probable first (score: that probability).
        """
        from vitdex.library.search import search

        return search(
            self, query, k=k, feature=feature, min_score=min_score, under=under,
            allowed_ids=allowed_ids, model=model, device=device, runtime=runtime, tag=tag,
        )  # fmt: skip

    def status(self) -> dict:
        """A JSON-ready summary; loads no model and builds no index."""
        from vitdex.library.status import status

        return status(self)

    def failures(self) -> list[FailedFile]:
        return self.store.images.failures()

    # --- images, for the gallery and the CLI ---
    def image(self, image_id: int) -> StoredImage:
        image = self.store.images.get(image_id)
        if image is None:
            raise NotFoundError(f"no image with id {image_id}")
        return image

    def images_at(self, paths: Iterable[str]) -> dict[str, StoredImage]:
        """The stored images at these paths (spelled any way: they are made canonical)."""
        return self.store.images.by_paths([canonical(p) for p in paths])

    def images(self, ids: Iterable[int]) -> dict[int, StoredImage]:
        """The stored images with these ids (ids no longer stored are left out)."""
        return self.store.images.by_ids(ids)

    def generation(self) -> int:
        """Moves whenever vectors change: what caches of search results key on."""
        return self.store.generation()

    def folders(self) -> list[str]:
        return self.store.images.folders()

    def browse(
        self,
        *,
        under: str | None = None,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        probe: str | None = None,
        label: str | None = None,
        tag: str | None = None,
    ) -> tuple[list[StoredImage], int]:
        """A page of images by path after `after` (or the last ones before `before`: paging by
        key, both ways), and how many match; `tag`: only images whose top label it is."""
        page = self.store.images.page(under=under, after=after, before=before, limit=limit,
                                      probe=probe, label=label, tag=tag)  # fmt: skip
        count = self.store.images.count_page(under=under, probe=probe, label=label, tag=tag)
        return page, count

    def prediction_labels(self) -> list[tuple[str, str]]:
        return self.store.probes.labels()

    def predictions_of(self, image_id: int) -> list[StoredPrediction]:
        return self.store.probes.of_image(image_id)

    def open_image_file(self, image_id: int) -> tuple[StoredImage, IO[bytes]]:
        """The image's file, opened only if it is still the regular file that was ingested
        (not a symlink, same device, inode, size and mtime): never whatever the path holds now."""
        image = self.image(image_id)
        try:
            return image, open_regular(image.path, expect=image.identity)
        except OSError as exc:
            raise NotFoundError(f"image {image_id}: the file changed or is gone ({exc})") from None

    # --- export ---
    def export(
        self,
        out: str | Path,
        *,
        features: Iterable[str] = (),
        under: str | Path | None = None,
        format: str = "parquet",
        progress: Callable[[int], None] | None = None,
    ) -> ExportReport:
        """Write the stored vectors of `features` (default: all) with each image's facts to
        `out`, as one parquet file or clip-retrieval's npy shards (see vitdex.library.export)."""
        from vitdex.library.export import export

        return export(self, out, features=tuple(features), under=under, format=format,
                      progress=progress)  # fmt: skip

    # --- the checkpoint's own labels ---
    def labels(
        self,
        paths: Iterable[str | Path],
        *,
        top: int = TOP_LABELS,
        model: str | None = None,
        device: str = "auto",
        runtime: str | None = None,
    ) -> list[ImageLabels]:
        """Each image's `top` labels from the model's classification head, best first, in the
        order given: stored ones for library images, else embedded now (an unreadable file gets
        an `error`). Raises NoLabelsError when the model has no head."""
        from vitdex.library.labels import image_labels

        return image_labels(self, paths, top=top, model=model, device=device, runtime=runtime)

    def labels_of(self, image_id: int) -> tuple[Label, ...]:
        """A library image's stored labels, best first (none without a head); loads no model."""
        from vitdex.library.labels import labels_of

        return labels_of(self, image_id)

    def tags(self) -> list[TagCount]:
        """The top labels the images have, with how many have each, most common first."""
        return self.store.labels.tags()


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def _same_vectors_legacy(bound: EmbeddingSpec, spec: EmbeddingSpec) -> bool:
    return (bound.model_id, dict(bound.preprocessing), bound.features, bound.dim,
            bound.runtime) == (spec.model_id, dict(spec.preprocessing), spec.features, spec.dim,
                               spec.runtime)  # fmt: skip
