"""The daily loop (issue 10): forget, the unmounted-drive guard, a plan with a known total,
pipe-friendly search output, JSON errors and range checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from tests.test_ingest import image_rows, ingest, run
from vitdex.cli.main import main
from vitdex.library import Library


@pytest.fixture
def lib(tmp_path) -> Path:
    return tmp_path / "lib"


def test_forget_drops_the_images_of_a_deleted_folder(tiny_model, photo_dir, lib, tmp_path):
    other = tmp_path / "other"
    for seed in range(3):
        make_photo(other / f"o{seed}.jpg", seed=30 + seed)
    ingest(lib, photo_dir, other, model=tiny_model)
    shutil.rmtree(other)
    out = run("ingest", other, "--library", lib, expect=1)
    assert "no such file or folder" in out and "vitdex forget" in out
    assert run("forget", other, "--library", lib, "--json") == {"removed": 3}
    assert sorted(Path(p).parent for p in image_rows(lib)) == [photo_dir] * 4
    result = run("search", photo_dir / "photo0.jpg", "--library", lib, "--json", "-k", "10")
    assert {Path(h["path"]).parent for h in result["results"]} == {photo_dir}
    status = run("status", "--library", lib, "--json")
    assert status["index"]["cls"]["vectors"] == 4 and status["index"]["cls"]["up_to_date"]


def test_an_emptied_folder_is_held_back_until_prune(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    keep = photo_dir.parent / "aside"
    shutil.move(photo_dir, keep)
    photo_dir.mkdir()  # an unmounted drive: the mount point is there, empty
    make_photo(photo_dir / "new.jpg", seed=44)
    result = CliRunner().invoke(main, ["ingest", str(photo_dir), "--library", str(lib)])
    assert result.exit_code == 1
    assert "4 of the 5 images" in result.stderr and "--prune" in result.stderr
    assert "1 added" in result.stdout and "0 removed" in result.stdout
    assert len(image_rows(lib)) == 5  # nothing removed
    planned = ingest(lib, photo_dir, extra=("--dry-run", "--prune"))
    assert planned["removed"] == 4
    done = ingest(lib, photo_dir, extra=("--prune",))
    assert done["removed"] == 4 and len(image_rows(lib)) == 1


def test_the_plan_comes_first_and_embedding_has_a_known_total(tiny_model, photo_dir, lib):
    events: list[tuple[str, int]] = []
    with Library.open(lib, create=True) as library:
        library.ingest(
            [photo_dir], model=str(tiny_model), progress=lambda e, n: events.append((e, n))
        )
    kinds = [event for event, _ in events]
    assert kinds.count("found") == 4 and ("to-embed", 4) in events
    assert kinds.index("to-embed") > max(i for i, k in enumerate(kinds) if k == "found")
    assert sum(n for event, n in events if event == "embedded") == 4


def test_search_prints_tab_separated_lines_and_paths_only(tiny_model, photo_dir, lib):
    spaced = photo_dir / "with  two spaces.jpg"
    make_photo(spaced, seed=45)
    ingest(lib, photo_dir, model=tiny_model)
    lines = run("search", photo_dir / "photo0.jpg", "--library", lib).splitlines()
    scored = dict(reversed(line.split("\t")) for line in lines)
    assert str(spaced) in scored and all(-1 <= float(s) <= 1 for s in scored.values())
    paths = run("search", photo_dir / "photo0.jpg", "--library", lib, "--paths-only").splitlines()
    assert paths == [line.split("\t")[1] for line in lines]


def test_no_results_goes_to_stderr(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    args = ["search", str(photo_dir / "photo0.jpg"), "--library", str(lib), "--min-score", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and result.stdout == "" and "no results" in result.stderr


def test_an_error_with_json_is_json_on_stdout_too(tmp_path):
    result = CliRunner().invoke(main, ["status", "--library", str(tmp_path / "none"), "--json"])
    assert result.exit_code == 1
    assert "no vitdex library" in json.loads(result.stdout)["error"]
    assert "no vitdex library" in result.stderr


@pytest.mark.parametrize("score", ["2", "-1.5", "nan"])
def test_min_score_is_range_checked(tiny_model, photo_dir, lib, score):
    ingest(lib, photo_dir, model=tiny_model)
    result = CliRunner().invoke(
        main, ["search", str(photo_dir / "photo0.jpg"), "--library", str(lib), "--min-score", score]
    )
    assert result.exit_code == 2


def test_index_eval_on_an_empty_library_says_so(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    for path in photo_dir.iterdir():
        path.unlink()
    ingest(lib, photo_dir, extra=("--prune",))
    out = run("index", "eval", "--library", lib, expect=1)
    assert "nothing to evaluate" in out


def test_status_says_the_runtime_and_an_empty_library(tiny_model, photo_dir, lib, tmp_path):
    ingest(lib, photo_dir, model=tiny_model)
    assert "runtime   fp32 (torch)" in run("status", "--library", lib)
    Library.open(tmp_path / "empty", create=True).close()
    assert "the library is empty" in run("status", "--library", tmp_path / "empty")


def test_serve_on_a_port_in_use_says_so_and_exits_1(tiny_model, photo_dir, lib):
    import socket
    import subprocess
    import sys

    ingest(lib, photo_dir, model=tiny_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "vitdex.cli", "serve", "--library", str(lib)]
        done = subprocess.run(
            [*command, "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr and "Traceback" not in done.stderr


def test_a_failed_first_ingest_leaves_a_library_that_says_it_is_empty(photo_dir, lib, tmp_path):
    out = run("ingest", photo_dir, "--library", lib, "--model", tmp_path / "no-model", expect=1)
    assert "no-model" in out
    assert "the library is empty" in run("status", "--library", lib)


@pytest.mark.parametrize("threshold", ["nan", "2", "-3"])
def test_dupes_threshold_is_range_checked(tiny_model, photo_dir, lib, threshold):
    ingest(lib, photo_dir, model=tiny_model)
    result = CliRunner().invoke(main, ["dupes", "--library", str(lib), "--threshold", threshold])
    assert result.exit_code == 2


def test_no_duplicates_goes_to_stderr(tiny_model, photo_dir, lib):
    ingest(lib, photo_dir, model=tiny_model)
    result = CliRunner().invoke(main, ["dupes", "--library", str(lib), "--threshold", "1"])
    assert result.exit_code == 0 and result.stdout == "" and "no duplicates" in result.stderr


def test_library_methods_have_explicit_signatures():
    import inspect

    for method, names in (
        (Library.search, {"k", "feature", "min_score", "under", "allowed_ids", "tag"}),
        (Library.ingest, {"model", "device", "runtime", "dry_run", "wait", "prune", "features"}),
    ):
        parameters = inspect.signature(method).parameters
        assert names <= set(parameters), names - set(parameters)
        assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        assert "see" not in (method.__doc__ or "").lower().split()[:3]
    with pytest.raises(TypeError, match="kk"):
        Library.search(None, "x.jpg", kk=3)  # a typo fails naming itself
