"""ingest --engine ray: the embed stage in a Ray Data actor pool on a local Ray instance.

Ray takes seconds to start on 2 cores, so one instance serves the module and the tests are few.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import save_tiny_vit
from tests.photos import make_photo
from vitdex.cli.main import main
from vitdex.library import Library
from vitdex.library.errors import EngineError
from vitdex.library.ray_executor import CRASH_MARKER_ENV, RayExecutor

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="module")
def crash_marker(tmp_path_factory) -> Path:
    """The actors' crash hook file; a test creates it to make one actor exit mid-run."""
    return tmp_path_factory.mktemp("ray-hook") / "crash-once"


@pytest.fixture(scope="module")
def local_ray(crash_marker):
    """One local Ray instance; its workers inherit the crash hook's variable."""
    os.environ[CRASH_MARKER_ENV] = str(crash_marker)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()
    del os.environ[CRASH_MARKER_ENV]


def run(*args, expect: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result.output


def photos(folder: Path, count: int, first_seed: int = 0) -> Path:
    for seed in range(first_seed, first_seed + count):
        make_photo(folder / f"sub{seed % 2}" / f"p{seed}.jpg", size=(200, 150), seed=seed)
    return folder


def vectors_by_path(folder: Path, feature: str) -> dict[str, np.ndarray]:
    with Library.open(folder) as library:
        spec = library.require_spec()
        paths = {image.id: image.path for image in library.store.images.under()}
        ids, vectors = library.store.vectors.of_images(spec, feature)
    return {paths[int(i)]: vector for i, vector in zip(ids, vectors, strict=True)}


def assert_whole(folder: Path, expected: int) -> None:
    """Every image once, every stored feature's index holding exactly the database's ids."""
    from vitdex.index.vector_index import VectorIndex

    with Library.open(folder) as library:
        images = list(library.store.images.under())
        paths = [image.path for image in images]
        assert len(paths) == len(set(paths)) == expected
        assert library.store.images.count_contents() == expected
        db_ids = sorted(image.id for image in images)
        for feature in ("cls", "mean"):
            (file,) = library.indexes.files(feature)
            assert sorted(VectorIndex.load(file.path).ids().tolist()) == db_ids


def test_ray_engine_stores_the_same_images_vectors_and_labels_as_local(
    local_ray, tiny_model, tmp_path
):
    folder = photos(tmp_path / "photos", 5)
    make_photo(Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg")), size=(90, 120), seed=9)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    reports = {}
    for engine in ("local", "ray"):
        extra = ("--ray-actors", "2") if engine == "ray" else ()
        out = run("ingest", folder, "--library", tmp_path / engine, "--model", tiny_model,
                  "--features", "cls,mean,cls-last2", "--engine", engine, *extra, "--json",
                  expect=0)  # fmt: skip
        reports[engine] = json.loads(out[out.index("{") :])
    assert reports["ray"]["added"] == reports["local"]["added"] == 6
    assert reports["ray"]["failed"] == reports["local"]["failed"]
    assert [f["path"] for f in reports["ray"]["failed"]] == [str(folder / "broken.jpg")]
    for feature in ("cls", "mean", "cls-last2"):  # the library's own features, not defaults
        local = vectors_by_path(tmp_path / "local", feature)
        remote = vectors_by_path(tmp_path / "ray", feature)
        assert sorted(remote) == sorted(local) and len(local) == 6
        for path, vector in local.items():
            assert float(vector @ remote[path]) >= 0.9999, (feature, path)
    with Library.open(tmp_path / "local") as a, Library.open(tmp_path / "ray") as b:
        facts = [{(i.path, i.width, i.height, i.format) for i in lib.store.images.under()}
                 for lib in (a, b)]  # fmt: skip
        assert facts[0] == facts[1]
        labels = [
            {i.path: [(x.label, round(x.score, 4)) for x in lib.labels_of(i.id)]
             for i in lib.store.images.under()}
            for lib in (a, b)
        ]  # fmt: skip
        assert labels[0] == labels[1] and all(len(top) == 3 for top in labels[0].values())
    assert_whole(tmp_path / "ray", 6)


def test_a_killed_worker_or_driver_costs_nothing(local_ray, crash_marker, tiny_model, tmp_path):
    folder = photos(tmp_path / "photos", 10)
    lib = tmp_path / "lib"

    class DriverKilled(Exception):
        pass

    def die_after_first_commit(event: str, _n: int) -> None:
        if event == "embedded":
            raise DriverKilled

    # 1. the driver dies after its first committed batch: the next ingest completes the run
    with Library.open(lib, create=True) as library:
        executor = RayExecutor(library, actors=1, rows_per_task=2)
        with pytest.raises(DriverKilled):
            library.ingest([folder], model=str(tiny_model), executor=executor, commit_every=2,
                           progress=die_after_first_commit)  # fmt: skip
        assert library.store.images.count() == 2
    # 2. an actor exits on its 2nd batch and may not restart: one clear error, nothing lost
    crash_marker.touch()
    with Library.open(lib) as library:
        executor = RayExecutor(library, actors=1, rows_per_task=2, restarts=0)
        with pytest.raises(EngineError, match="the Ray embed stage failed") as failed:
            library.ingest([folder], executor=executor, commit_every=2)
        assert "\n" not in str(failed.value)
        before = library.store.images.count()
    assert not crash_marker.exists() and 2 <= before <= 4  # at most 1 batch of this run
    # 3. an actor exits on its 2nd batch: Ray restarts it and retries that batch
    crash_marker.touch()
    with Library.open(lib) as library:
        executor = RayExecutor(library, actors=1, rows_per_task=2)
        report = library.ingest([folder], executor=executor, commit_every=2)
    assert not crash_marker.exists()  # the actor did exit
    assert (report.added, report.unchanged, report.failed) == (10 - before, before, [])
    assert_whole(lib, 10)
    with Library.open(lib) as library:
        again = library.ingest([folder], executor=RayExecutor(library))
    assert (again.added, again.unchanged) == (0, 10)


def test_a_worker_whose_spec_differs_is_refused(local_ray, tmp_path):
    model = save_tiny_vit(tmp_path / "model", seed=0)
    folder = photos(tmp_path / "photos", 1)
    lib = tmp_path / "lib"
    run("ingest", folder, "--library", lib, "--model", model)
    with Library.open(lib) as library:
        key = library.require_spec().key
    save_tiny_vit(model, seed=5)  # the folder the workers load from now holds other weights
    photos(folder, 1, first_seed=1)
    out = run("ingest", folder, "--library", lib, "--engine", "ray", expect=1)
    (line,) = out.strip().splitlines()
    assert "refused" in line and f"library holds spec {key}" in line
    other = line.split(" as spec ")[1].split(",")[0]
    assert len(other) == 16 and other != key
    with Library.open(lib) as library:
        assert library.store.images.count() == 1
    shutil.rmtree(model)  # a node that cannot load the model: one line, not a retry loop
    out = run("ingest", folder, "--library", lib, "--engine", "ray", expect=1)
    (line,) = out.strip().splitlines()
    assert f"cannot load {model}" in line, line
