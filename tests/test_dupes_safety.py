"""dupes never lists for deletion what it cannot vouch for (issue 9).

One real file is one image whatever its spelling; `--list-others` lists only files that are still
the file that was ingested, never the others of a keeper that changed or vanished, and never a
name that a one-path-per-line file would misread; `--under` compares paths byte by byte.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli.main import main
from vitdex.library import Library

pytestmark = pytest.mark.usefixtures("database")  # each test on SQLite and on PostgreSQL

SIZE = (160, 120)
OLD, NEW = 10**17, 10**18  # mtimes: the oldest copy is the keeper (same pixels, same size)


def run(*args: object, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


def ingest(library: Path, model: Path, *paths: str | Path) -> None:
    with Library.open(library, create=True) as opened:
        report = opened.ingest([str(p) for p in paths], model=str(model), device="cpu")
    assert not report.failed, report.failed


def copies(folder: Path, names: list[str], *, seed: int = 0) -> list[Path]:
    """`names[0]` and exact copies of it under the other names; the first is the oldest."""
    first = make_photo(folder / names[0], SIZE, seed=seed)
    made = [first] + [Path(shutil.copyfile(first, folder / name)) for name in names[1:]]
    for path in made:
        os.utime(path, ns=(NEW, NEW))
    os.utime(first, ns=(OLD, OLD))
    return made


def names(group: dict) -> set[str]:
    return {Path(m["path"]).name for m in group["members"]}


# --- finding: one real file by several spellings --------------------------------------------------
@pytest.mark.parametrize("spelling", ["dot-dot", "folder symlink", "file symlink"])
def test_one_file_by_two_spellings_is_not_a_duplicate(tmp_path, tiny_model, spelling):
    """Once several images, which dupes reported as exact duplicates with --list-others listing
    the only real copy."""
    photos = tmp_path / "photos"
    for seed in (0, 1, 3, 4):
        make_photo(photos / f"p{seed}.jpg", SIZE, seed=seed)
    if spelling == "file symlink":
        (photos / "p0-link.jpg").symlink_to(photos / "p0.jpg")
    library = tmp_path / "lib"
    ingest(library, tiny_model, photos)
    if spelling == "dot-dot":
        ingest(library, tiny_model, f"{photos}/../photos")
    elif spelling == "folder symlink":
        (tmp_path / "link").symlink_to(photos)
        ingest(library, tiny_model, tmp_path / "link")
    with Library.open(library) as opened:
        assert opened.store.images.count() == 4
    others = tmp_path / "others.txt"
    data = json.loads(run("dupes", "--library", library, "--json", "--list-others", others).stdout)
    assert [g for g in data["groups"] if g["kind"] == "exact"] == []
    assert others.read_bytes() == b""


# --- finding: never list on the strength of a path alone ------------------------------------------
@pytest.fixture
def four_copies(tmp_path, tiny_model) -> tuple[Path, Path]:
    """a.jpg (the keeper: oldest) and its exact copies b, c, d, e."""
    photos = tmp_path / "photos"
    copies(photos, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    ingest(tmp_path / "lib", tiny_model, photos)
    return tmp_path / "lib", photos


def test_list_others_leaves_out_files_changed_or_gone_since_ingest(four_copies, tmp_path):
    library, photos = four_copies
    (photos / "c.jpg").write_bytes(b"not the photo any more")
    (photos / "d.jpg").unlink()
    (photos / "e.jpg").unlink()
    (photos / "e.jpg").symlink_to(make_photo(tmp_path / "elsewhere.jpg", SIZE, seed=5))
    listing = tmp_path / "others.txt"
    result = run("dupes", "--library", library, "--list-others", listing)
    assert "group 1 (exact, 5 images)" in result.stdout  # the groups still show what was ingested
    assert listing.read_text().splitlines() == [str(photos / "b.jpg")]
    for name in ("c.jpg", "d.jpg", "e.jpg"):
        assert f"{photos / name}: not listed: it changed or is gone" in result.stderr
    assert "wrote 1 paths" in result.stderr


@pytest.mark.parametrize("fate", ["deleted", "replaced by a symlink to a copy"])
def test_a_keeper_that_changed_or_vanished_makes_no_other_deletable(four_copies, tmp_path, fate):
    """The others may now be the only copies: deleting them would lose the photo."""
    library, photos = four_copies
    (photos / "a.jpg").unlink()
    if fate != "deleted":
        (photos / "a.jpg").symlink_to(photos / "b.jpg")
    listing = tmp_path / "others.txt"
    result = run("dupes", "--library", library, "--list-others", listing)
    assert listing.read_bytes() == b""
    for name in ("b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        assert (
            f"{photos / name}: not listed: its keeper {photos / 'a.jpg'} changed or is gone"
            in result.stderr
        )


# --- finding: a name the list file would misread ----------------------------------------------
def test_list_others_never_writes_a_name_that_reads_as_other_paths(tmp_path, tiny_model):
    """`a.jpg\\nz.jpg` written as a line reads as the keeper a.jpg (and z.jpg): a user deleting
    the list would delete the keeper. A non-UTF-8 name cannot be written as text either."""
    photos = tmp_path / "photos"
    newline, undecodable = "a.jpg\nz.jpg", os.fsdecode(b"bad\xff.jpg")
    copies(photos, ["a.jpg", "b.jpg", newline, undecodable])
    library = tmp_path / "lib"
    ingest(library, tiny_model, photos)
    listing = tmp_path / "others.txt"

    result = run("dupes", "--library", library, "--list-others", listing)
    assert listing.read_bytes() == os.fsencode(photos / "b.jpg") + b"\n"
    assert repr(f"{photos}/a.jpg\nz.jpg") in result.stderr
    assert f"{photos}/bad\ufffd.jpg" in result.stderr
    assert result.stderr.count("use --null") == 2

    for flag in ("--null", "-0"):
        run("dupes", "--library", library, "--list-others", listing, flag)
        raw = listing.read_bytes()
        assert raw.endswith(b"\0")
        assert sorted(raw[:-1].split(b"\0")) == sorted(
            os.fsencode(photos / name) for name in ("b.jpg", newline, undecodable)
        )
    assert (
        "--null goes with --list-others"
        in run("dupes", "--library", library, "--null", expect=2).output
    )


# --- finding: --under is a case-sensitive range --------------------------------------------------
def test_under_is_case_sensitive_in_dupes_and_search(tmp_path, tiny_model):
    upper, lower = tmp_path / "Photos", tmp_path / "photos"
    copies(upper, ["u.jpg", "u-copy.jpg"], seed=0)
    copies(lower, ["l.jpg", "l-copy.jpg"], seed=5)
    if os.path.samefile(upper, lower):
        pytest.skip("this filesystem is case-insensitive")
    library = tmp_path / "lib"
    ingest(library, tiny_model, upper, lower)
    (tmp_path / "link").symlink_to(lower)
    for under, expected in ((upper, {"u.jpg", "u-copy.jpg"}), (lower, {"l.jpg", "l-copy.jpg"}),
                            (tmp_path / "link", {"l.jpg", "l-copy.jpg"})):  # fmt: skip
        data = json.loads(run("dupes", "--library", library, "--under", under, "--json").stdout)
        assert [names(g) for g in data["groups"]] == [expected], under
    for under, query, expected in ((lower, lower / "l.jpg", [lower / "l-copy.jpg"]),
                                   (upper, lower / "l.jpg", [upper / "u.jpg", upper / "u-copy.jpg"])
                                   ):  # fmt: skip
        found = json.loads(
            run("search", query, "--under", under, "--library", library, "--json").stdout
        )
        assert sorted(r["path"] for r in found["results"]) == sorted(map(str, expected)), under
