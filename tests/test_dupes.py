"""dupes: exact groups by content, near groups by cosine, keepers, --under, --list-others."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.photos import make_photo
from vitdex.cli.main import main
from vitdex.library import Library
from vitdex.library.dupes import MIN_CALIBRATION, RELATIVE_RADIUS, auto_threshold, find_duplicates

pytestmark = pytest.mark.usefixtures("module_database")  # each test on SQLite and on PostgreSQL

DISTINCT = range(12)  # seeds 2 and 10 look alike to the tiny model: cls cosine ~0.995
SIZE = (320, 240)


def rotated_copy(src: Path, dst: Path, quality: int) -> None:
    """Pixels stored turned 90 degrees, with EXIF Orientation 6 turning them back on decode."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(src).transpose(Image.Transpose.ROTATE_90).save(dst, quality=quality, exif=exif)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model, module_database) -> Path:
    root = tmp_path_factory.mktemp("dupes")
    photos, others = root / "photos", root / "photos" / "others"
    for seed in DISTINCT:
        make_photo((photos if seed < 5 else others) / f"d{seed}.jpg", size=SIZE, seed=seed)
    sub = photos / "sub"
    sub.mkdir()
    shutil.copyfile(photos / "d0.jpg", sub / "d0_copy.jpg")  # exact, inside a near group
    shutil.copyfile(photos / "d3.jpg", sub / "d3_copy.jpg")  # exact only
    Image.open(photos / "d0.jpg").resize((160, 120), Image.LANCZOS).save(sub / "d0_small.jpg")
    Image.open(photos / "d0.jpg").save(photos / "d0_q30.jpg", quality=30)
    rotated_copy(photos / "d0.jpg", photos / "d0_rot.jpg", quality=70)
    Image.open(photos / "d1.jpg").resize((640, 480), Image.LANCZOS).save(photos / "d1_big.jpg")
    Image.open(photos / "d1.jpg").save(photos / "d1_q30.jpg", quality=30)
    rotated_copy(photos / "d1.jpg", photos / "d1_rot.jpg", quality=90)
    for i, path in enumerate(sorted(photos.rglob("*.jpg"))):  # d0.jpg older than its copy
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    os.utime(photos / "d0.jpg", ns=(10**17, 10**17))
    folder = root / "lib"
    with Library.open(folder, create=True) as lib:
        report = lib.ingest(
            [photos], model=str(tiny_model), device="cpu", index_features=("cls", "mean")
        )
    assert report.added == 20 and not report.failed
    return folder


def run(*args, expect: int = 0, stderr: bool = False) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result.stderr if stderr else result.stdout


def summary(result: dict) -> set[tuple[str, frozenset[str], str]]:
    return {
        (g["kind"], frozenset(Path(m["path"]).name for m in g["members"]), Path(g["keep"]).name)
        for g in result["groups"]
    }


EXPECTED = {
    ("exact", frozenset({"d0.jpg", "d0_copy.jpg"}), "d0.jpg"),
    ("exact", frozenset({"d3.jpg", "d3_copy.jpg"}), "d3.jpg"),
    (
        "near",
        frozenset({"d0.jpg", "d0_copy.jpg", "d0_small.jpg", "d0_q30.jpg", "d0_rot.jpg"}),
        "d0.jpg",
    ),
    ("near", frozenset({"d1.jpg", "d1_big.jpg", "d1_q30.jpg", "d1_rot.jpg"}), "d1_big.jpg"),
}


@pytest.mark.parametrize("feature", ["cls", "mean"])
def test_groups_copies_and_nothing_else(library, feature):
    with Library.open(library) as lib:
        result = find_duplicates(lib, feature=feature)
    # resized, re-encoded and EXIF-rotated copies grouped; 12 distinct photos never
    assert summary(result) == EXPECTED
    assert result["threshold_source"].startswith("auto")
    for group in result["groups"]:
        first = group["members"][0]
        assert first["path"] == group["keep"] and first["score"] == 1.0
        scores = [m["score"] for m in group["members"]]
        assert scores == sorted(scores, reverse=True)
        if group["kind"] == "exact":
            assert set(scores) == {1.0}
        else:
            assert min(scores) >= result["threshold"]


def test_threshold_is_relative_to_the_library_scale(library):
    with Library.open(library) as lib:
        auto = find_duplicates(lib)
        loose = find_duplicates(lib, threshold=0.5)
    # the tiny model's distinct photos are all within cosine ~0.89 of each other
    assert 0.99 < auto["threshold"] < 1.0
    assert summary(loose) - EXPECTED == {
        (
            "near",
            frozenset(p.name for p in library.parent.joinpath("photos").rglob("*.jpg")),
            "d1_big.jpg",
        )
    }
    assert loose["threshold_source"] == "given"


def test_auto_threshold_rule():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    threshold, typical = auto_threshold(x)
    assert typical == pytest.approx(1.0, abs=0.02)  # random directions are ~orthogonal
    assert threshold == pytest.approx(1 - RELATIVE_RADIUS * typical)
    squeezed = x * 0.1 + np.eye(64, dtype=np.float32)[0]  # all close together: a stricter cut
    squeezed /= np.linalg.norm(squeezed, axis=1, keepdims=True)
    assert auto_threshold(squeezed)[0] > threshold + 0.04
    assert auto_threshold(x[: MIN_CALIBRATION - 1]) == (1 - RELATIVE_RADIUS, 1.0)


def test_filtered_library_index_gives_the_same_groups(library, monkeypatch, tmp_path):
    """Past the flat size, the library's own IVF index is searched through an id filter."""
    import vitdex.index.vector_index as vector_index

    monkeypatch.setattr(vector_index, "FLAT_MAX_N", 4)
    shutil.copytree(library, tmp_path / "lib")
    with Library.open(tmp_path / "lib") as lib:
        lib.rebuild_index("cls", "ivfsq8")
        assert lib.index("cls").kind == "ivfsq8"
        assert summary(find_duplicates(lib)) == EXPECTED


def test_cli_json_and_list_others(library, tmp_path):
    others = tmp_path / "others.txt"
    data = json.loads(run("dupes", "--library", library, "--json", "--list-others", others))
    assert set(data) >= {"groups", "threshold", "rule", "feature"}
    assert summary(data) == EXPECTED
    assert all(set(m) == {"id", "path", "score"} for g in data["groups"] for m in g["members"])
    listed = [Path(p).name for p in others.read_text().splitlines()]
    assert sorted(listed) == sorted(
        [
            "d0_copy.jpg",
            "d3_copy.jpg",
            "d0_small.jpg",
            "d0_q30.jpg",
            "d0_rot.jpg",
            "d1.jpg",
            "d1_q30.jpg",
            "d1_rot.jpg",
        ]
    )
    assert all(Path(p).is_file() for p in others.read_text().splitlines())  # nothing touched


def test_cli_under_and_table(library):
    photos = library.parent / "photos"
    data = json.loads(run("dupes", "--library", library, "--under", photos / "sub", "--json"))
    # only d0_copy and d0_small are below sub/: d0_copy's exact twin is outside
    assert summary(data) == {("near", frozenset({"d0_copy.jpg", "d0_small.jpg"}), "d0_copy.jpg")}
    table = run("dupes", "--library", library, "--feature", "mean")
    assert "group 4 (near, 4 images)" in table and str(photos / "d1_big.jpg") in table
    others = ("dupes", "--library", library, "--under", photos / "others")
    assert run(*others) == "" and "no duplicates" in run(*others, stderr=True)


def test_empty_library(tmp_path, own_database):
    Library.open(tmp_path / "lib", create=True).close()
    data = json.loads(run("dupes", "--library", tmp_path / "lib", "--json"))
    assert data["groups"] == []
    assert run("dupes", "--library", tmp_path / "lib") == ""  # results only on stdout
    assert "no duplicates" in run("dupes", "--library", tmp_path / "lib", stderr=True)


def test_small_library_of_distinct_photos_has_no_near_group(tiny_model, tmp_path, own_database):
    """Seven photos and one re-encoded copy: the threshold comes from the library's own scores."""
    photos = tmp_path / "few"
    for seed in range(6):
        make_photo(photos / f"p{seed}.jpg", (320, 240), seed=seed)
    make_photo(photos / "p3-small.jpg", (320, 240), seed=3, quality=60)
    lib = tmp_path / "few-lib"
    with Library.open(lib, create=True) as library:
        library.ingest([photos], model=str(tiny_model))
        groups = find_duplicates(library)["groups"]
    assert [sorted(Path(m["path"]).name for m in g["members"]) for g in groups] == [
        ["p3-small.jpg", "p3.jpg"]
    ]
