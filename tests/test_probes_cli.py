"""`vitdex probe` end to end on real tiny-ViT embeddings of images in class folders."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.photos import photo_array
from vitdex.cli.main import main

pytestmark = pytest.mark.usefixtures("module_database")  # on SQLite and on PostgreSQL

COLOURS = {"red": 0, "green": 1, "blue": 2}  # label -> the RGB channel its photos lean to
PER_CLASS = 8
SHIFT = 70  # enough for the tiny random ViT to tell the classes apart, little enough that it
# still sees the photos of one class as distinct pictures (not near duplicates)


def colour_photo(path: Path, channel: int, seed: int) -> Path:
    """A synthetic photo (shapes, gradients, noise) tinted towards one channel."""
    pixels = photo_array((64, 64), seed).astype(np.int16)
    pixels[..., channel] += SHIFT
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return path


def run(*args: object, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, module_database) -> dict:
    """A library with a probe `colours` trained on class folders (plus a bad and a missing row)."""
    root = tmp_path_factory.mktemp("probe")
    classes = root / "classes"
    for index, (label, rgb) in enumerate(COLOURS.items()):
        for i in range(PER_CLASS):
            colour_photo(classes / label / f"{label}{i}.png", rgb, seed=100 * index + i)
    (classes / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    queries = {
        label: colour_photo(root / "queries" / f"{label}.png", rgb, seed=999 + i)
        for i, (label, rgb) in enumerate(COLOURS.items())
    }
    library = root / "library"
    common = ["--library", library, "--model", tiny_model, "--device", "cpu"]
    result = run("probe", "train", "colours", "--folders", classes, "--cv", 3, "--json", *common)
    return {
        "root": root,
        "library": library,
        "common": common,
        "classes": classes,
        "queries": queries,
        "result": result,
        "data": json.loads(result.stdout),
    }


def test_train_reports_metrics_and_skips_unreadable_files(trained):
    data = trained["data"]
    assert data["name"] == "colours"
    assert data["classes"] == ["blue", "green", "red"]
    metrics = data["metrics"]
    assert metrics["examples"] == 3 * PER_CLASS
    assert metrics["val_accuracy"] > 1 / 3
    validation = metrics["validation"]
    assert set(validation["per_class"]) == set(COLOURS)
    confusion = np.array(validation["confusion"])  # rows: true class, columns: predicted
    assert confusion.sum() == validation["n"] > 0
    assert metrics["val_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # balanced accuracy: the mean recall of the classes present, recomputed from the confusion;
    # the colour families are separable, so every held-out example is right
    support = confusion.sum(axis=1)
    recalls = np.diag(confusion)[support > 0] / support[support > 0]
    assert metrics["balanced_accuracy"] == pytest.approx(recalls.mean())
    assert metrics["balanced_accuracy"] == 1.0
    assert metrics["cv"]["folds"] == 3 and len(metrics["cv"]["fold_accuracy"]) == 3
    assert np.array(metrics["cv"]["confusion"]).sum() == 3 * PER_CLASS
    assert metrics["cv"]["accuracy"] > 1 / 3
    sweep = metrics["regularization"]["sweep"]
    assert metrics["regularization"]["C"] in [row["C"] for row in sweep]
    broken = trained["classes"] / "red" / "broken.jpg"
    assert [row["path"] for row in data["skipped"]] == [str(broken)]
    assert data["ingested"] == 3 * PER_CLASS


def test_saved_probe_is_listed_shown_and_bound_to_the_spec(trained):
    from vitdex.library import Library

    listed = json.loads(run("probe", "list", "--json", "--library", trained["library"]).stdout)
    (row,) = listed["probes"]
    assert row["name"] == "colours" and row["matches_library_spec"]
    shown = json.loads(
        run("probe", "show", "colours", "--json", "--library", trained["library"]).stdout
    )
    assert shown["metrics"] == trained["data"]["metrics"]
    assert "validation (" in run("probe", "show", "colours", "--library", trained["library"]).stdout
    with Library.open(trained["library"]) as library:
        (probe,) = library.store.probes.all()
        spec = library.require_spec()
        assert probe.spec_key == spec.key
        assert probe.weights.shape == (3, spec.dim) and probe.bias.shape == (3,)
        assert probe.weights.dtype == probe.bias.dtype == np.float32


def test_predict_files_inside_and_outside_the_library(trained):
    outside = trained["queries"]
    inside = trained["classes"] / "green" / "green0.png"
    data = json.loads(
        run(
            "probe",
            "predict",
            "colours",
            inside,
            *outside.values(),
            "--top",
            2,
            "--json",
            *trained["common"],
        ).stdout
    )
    predictions = data["predictions"]
    assert [p["path"] for p in predictions] == [str(inside), *map(str, outside.values())]
    for prediction in predictions:
        assert len(prediction["top"]) == 2
        assert prediction["label"] == prediction["top"][0]["label"]
        assert prediction["top"][0]["score"] >= prediction["top"][1]["score"]
        assert 0 < prediction["score"] <= 1
    correct = sum(p["label"] == label for p, label in zip(predictions[1:], outside, strict=True))
    assert correct >= 2, predictions


def test_predict_all_then_search_by_label(trained):
    from vitdex.library import Library

    common, library = trained["common"], trained["library"]
    query = trained["queries"]["blue"]
    refused = run("search", query, "--probe", "colours", "--label", "blue", *common, ok=False)
    assert refused.exit_code == 1 and "probe predict colours --all" in refused.output
    stored = json.loads(run("probe", "predict", "colours", "--all", "--json", *common).stdout)
    assert stored["stored"] == 3 * PER_CLASS == sum(stored["counts"].values())
    blue = {p["path"] for p in stored["predictions"] if p["label"] == "blue"}
    assert blue
    hits = json.loads(
        run(
            "search", query, "--probe", "colours", "--label", "blue", "-k", 50, "--json", *common
        ).stdout
    )["results"]
    assert {h["path"] for h in hits} == blue
    # Predicting again replaces the stored rows rather than adding to them.
    run("probe", "predict", "colours", "--all", *common)
    with Library.open(library) as opened:
        from vitdex.probes.store import get_probe

        assert get_probe(opened, "colours").predictions == 3 * PER_CLASS
    unknown = run("search", query, "--probe", "colours", "--label", "purple", *common, ok=False)
    assert unknown.exit_code == 1 and "blue, green, red" in unknown.output
    assert run("search", query, "--probe", "colours", *common, ok=False).exit_code == 2


def test_existing_name_needs_replace_and_delete_removes(trained):
    common, classes = trained["common"], trained["classes"]
    again = run("probe", "train", "colours", "--folders", classes, *common, ok=False)
    assert again.exit_code == 1 and "--replace" in again.output
    run("probe", "train", "spare", "--folders", classes, *common)
    assert "deleted probe spare" in run("probe", "delete", "spare", *common[:2]).stdout
    listed = json.loads(run("probe", "list", "--json", *common[:2]).stdout)["probes"]
    assert [p["name"] for p in listed] == ["colours"]
    missing = run("probe", "show", "spare", *common[:2], ok=False)
    assert missing.exit_code == 1 and "no probe named 'spare'" in missing.output


def test_probe_of_another_spec_is_refused(trained):
    from vitdex.library import Library

    common = trained["common"]
    with Library.open(trained["library"]) as library:
        spec = library.require_spec()
        probe = library.store.probes.get("colours")
        library.store.probes.save(
            dataclasses.replace(spec, key="0" * 16), "foreign", feature="cls",
            classes=probe.classes, weights=probe.weights, bias=probe.bias, metrics=probe.metrics,
        )  # fmt: skip
    refused = run("probe", "predict", "foreign", trained["queries"]["red"], *common, ok=False)
    assert refused.exit_code == 1 and "spec" in refused.output and "--replace" in refused.output
    listed = json.loads(run("probe", "list", "--json", *common[:2]).stdout)["probes"]
    assert {p["name"]: p["matches_library_spec"] for p in listed}["foreign"] is False
    run("probe", "delete", "foreign", *common[:2])


def test_labels_csv_with_missing_files_and_too_few_examples(trained, tmp_path, caplog):
    classes = trained["classes"]
    csv = tmp_path / "labels.csv"
    rows = [f"{classes}/red/red{i}.png,red" for i in range(4)]
    rows += [f"{classes}/blue/blue{i}.png,blue" for i in range(4)]
    rows += [f"{classes}/green/green0.png,green", "gone.png,green"]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    result = run("probe", "train", "few", "--labels", csv, *trained["common"], ok=False)
    assert result.exit_code == 1
    assert "'green' (1)" in result.output
    assert f"skipped {tmp_path / 'gone.png'} (green): no such file" in caplog.text


def test_usage_errors(trained):
    common = trained["common"]
    assert run("probe", "train", "x", *common, ok=False).exit_code == 2
    assert run("probe", "predict", "colours", *common, ok=False).exit_code == 2


@contextmanager
def lock_held_by_another_process(library: Path) -> Iterator[int]:
    """A real second process holding the library's write lock until its stdin closes."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom vitdex.library.lock import write_lock\n"
        "with write_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(library)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait()


def test_writers_refuse_a_library_another_process_is_writing(trained):
    """probe predict --all, train and delete write, so each takes the write lock: beside an
    ingest they fail with one clear line (exit 1) instead of breaking it; --wait waits."""
    from vitdex.library import Library
    from vitdex.probes.store import get_probe, probe_names

    common, library = trained["common"], trained["library"]
    with Library.open(library) as opened:
        before = get_probe(opened, "colours").predictions
    with lock_held_by_another_process(library) as pid:
        for args in (
            ["probe", "predict", "colours", "--all", *common],
            ["probe", "train", "locked", "--folders", trained["classes"], *common],
            ["probe", "delete", "colours", *common[:2]],
        ):
            refused = run(*args, ok=False)
            assert refused.exit_code == 1, args
            assert f"is being written by pid {pid}" in refused.output, args
            assert "--wait" in refused.output and "Traceback" not in refused.output, args
    with Library.open(library) as opened:
        assert get_probe(opened, "colours").predictions == before
        assert "locked" not in probe_names(opened)
    stored = json.loads(run("probe", "predict", "colours", "--all", "--wait", "--json",
                            *common).stdout)  # fmt: skip
    assert stored["stored"] == 3 * PER_CLASS


def test_stored_predictions_skip_images_removed_meanwhile(trained):
    """An image removed between reading the vectors and storing the labels is skipped, never a
    foreign-key error."""
    from vitdex.library import Library
    from vitdex.probes.predict import predict_all
    from vitdex.probes.store import get_probe, store_predictions

    with Library.open(trained["library"]) as library:
        probe = get_probe(library, "colours")
        ids = np.append(library.store.images.ids(), 10**9)
        with library.writing():
            stored = store_predictions(
                library, probe, ids, ["red"] * len(ids), np.ones(len(ids), np.float32)
            )
        assert stored == len(ids) - 1 == 3 * PER_CLASS
        assert get_probe(library, "colours").predictions == 3 * PER_CLASS
        predict_all(library, "colours")  # the real labels back, for the other tests


def edited_copy(source: Path, target: Path) -> Path:
    """A near duplicate: the same photo with a small corner patch inverted."""
    pixels = np.array(Image.open(source))
    pixels[:4, :4] = 255 - pixels[:4, :4]
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target)
    return target


@pytest.fixture(scope="module")
def with_copies(tmp_path_factory, tiny_model) -> dict:
    """Class folders holding identical copies and edited copies of some photos, and a --test CSV
    with a copy and an edited copy of training photos besides new ones."""
    root = tmp_path_factory.mktemp("copies")
    classes = root / "classes"
    originals: dict[str, list[Path]] = {}
    for index, (label, channel) in enumerate(COLOURS.items()):
        originals[label] = [
            colour_photo(classes / label / f"{label}{i}.png", channel, seed=100 * index + i)
            for i in range(6)
        ]
    copies = {}  # copy -> original
    for label in COLOURS:
        first, second = originals[label][:2]
        same = classes / label / f"copy of {first.name}"
        same.write_bytes(first.read_bytes())
        copies[same] = first
        copies[edited_copy(second, classes / label / f"edited {second.name}")] = second
    test_dir = root / "test"
    test_dir.mkdir()
    test_copy = test_dir / "blue-copy.png"
    test_copy.write_bytes(originals["blue"][3].read_bytes())
    test_edit = edited_copy(originals["green"][3], test_dir / "green-edit.png")
    fresh = {
        label: colour_photo(test_dir / f"new-{label}.png", channel, seed=777 + index)
        for index, (label, channel) in enumerate(COLOURS.items())
    }
    (root / "test.csv").write_text(
        "path,label\n"
        + f"{test_copy},blue\n{test_edit},green\n"
        + "".join(f"{path},{label}\n" for label, path in fresh.items())
    )
    return {
        "root": root,
        "classes": classes,
        "copies": copies,
        "originals": originals,
        "test_csv": root / "test.csv",
        "test_copy": test_copy,
        "test_edit": test_edit,
        "common": ["--model", tiny_model, "--device", "cpu"],
    }


def test_copies_and_near_duplicates_never_straddle_a_split(with_copies, own_database):
    """Identical files and edited copies are grouped with their original, and no group has
    members on both sides of the validation split (nor of the sweep's inner split)."""
    from vitdex.library import Library
    from vitdex.probes.labels import read_folder_labels
    from vitdex.probes.split import stratified_split
    from vitdex.probes.train import SEED, _groups, fit_and_score
    from vitdex.probes.vectors import labelled_vectors

    library_dir = with_copies["root"] / "library"
    result = run(
        "probe", "train", "colours", "--folders", with_copies["classes"], "--json",
        "--library", library_dir, *with_copies["common"],
    )  # fmt: skip
    grouping = json.loads(result.stdout)["metrics"]["grouping"]
    assert grouping["identical"] == 6 and grouping["near"] >= 6
    with Library.open(library_dir) as library:
        data = labelled_vectors(library, read_folder_labels(with_copies["classes"]), "cls")
        groups = _groups(library, "cls", data).group
    assert grouping["groups"] == len(set(groups.tolist()))
    group_of = dict(zip(data.paths, groups.tolist(), strict=True))
    for copy, original in with_copies["copies"].items():
        assert group_of[str(copy)] == group_of[str(original)], copy
    classes = sorted(COLOURS)
    y = np.array([classes.index(label) for label in data.labels])
    for seed in (SEED, 1, 2, 3):
        fitted = fit_and_score(
            data.vectors, y, classes, balanced=False, rng=np.random.default_rng(seed),
            groups=groups,
        )  # fmt: skip
        held = fitted.held_out
        rest = np.setdiff1d(np.arange(len(y)), held)
        assert not set(groups[held].tolist()) & set(groups[rest].tolist())
        inner_fit, inner_val = stratified_split(
            y[rest], 0.2, np.random.default_rng(seed), groups[rest]
        )
        assert not set(groups[rest][inner_fit].tolist()) & set(groups[rest][inner_val].tolist())


def test_test_set_skips_copies_and_near_duplicates_of_training_images(
    with_copies, caplog, own_database
):
    result = run(
        "probe", "train", "scored", "--folders", with_copies["classes"], "--test",
        with_copies["test_csv"], "--json", "--library", with_copies["root"] / "library-test",
        *with_copies["common"],
    )  # fmt: skip
    data = json.loads(result.stdout)
    skipped = {row["path"]: row["reason"] for row in data["skipped"] if row.get("set") == "test"}
    blue3 = with_copies["originals"]["blue"][3]
    green3 = with_copies["originals"]["green"][3]
    assert skipped == {
        str(with_copies["test_copy"]): f"identical to training image {blue3}",
        str(with_copies["test_edit"]): f"near duplicate of training image {green3}",
    }
    assert data["metrics"]["test"]["n"] == 3  # only the new photos are scored
    assert f"near duplicate of training image {green3}" in caplog.text


def test_no_ingest_keeps_labelled_images_out_of_the_library(with_copies, own_database):
    from vitdex.library import Library

    kept_out = with_copies["root"] / "kept-out"
    classes = with_copies["classes"]
    common = ["--library", kept_out, *with_copies["common"]]
    result = run("probe", "train", "apart", "--folders", classes, "--no-ingest", *common)
    assert "were added to the library" not in result.stdout
    assert "24 labelled images were embedded for this probe only" in result.stdout
    with Library.open(kept_out) as library:
        assert len(library.store.images.ids()) == 0
        assert library.store.probes.names() == ["apart"]
    # the probe works on the very same vectors: its predictions match an ingested probe's
    predicted = json.loads(
        run("probe", "predict", "apart", *with_copies["originals"]["red"][:2], "--json",
            *common).stdout
    )["predictions"]  # fmt: skip
    assert [p["label"] for p in predicted] == ["red", "red"]
    ingested = with_copies["root"] / "ingested"
    result = run("probe", "train", "in", "--folders", classes, "--library", ingested,
                 *with_copies["common"])  # fmt: skip
    assert (
        "24 labelled images were added to the library (use --no-ingest to keep them out)"
        in result.stdout.splitlines()
    )
    with Library.open(ingested) as library:
        assert len(library.store.images.ids()) == 24


def test_predict_reports_bad_files_and_labels_the_others(trained, tmp_path):
    good = trained["queries"]["red"]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    gone = tmp_path / "gone.jpg"
    common = trained["common"]
    result = run("probe", "predict", "colours", good, empty, gone, *common)
    assert result.stdout.splitlines()[0].startswith(f"{good}  ")
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.splitlines() == [f"{empty}: empty file", f"{gone}: no such file"]
    data = json.loads(
        run("probe", "predict", "colours", empty, good, gone, "--json", *common).stdout
    )
    assert [p["path"] for p in data["predictions"]] == [str(good)]
    assert data["errors"] == [
        {"path": str(empty), "reason": "empty file"},
        {"path": str(gone), "reason": "no such file"},
    ]
    none = run("probe", "predict", "colours", empty, gone, *common, ok=False)
    assert none.exit_code == 1 and none.stdout == ""
    assert none.stderr.splitlines() == [f"{empty}: empty file", f"{gone}: no such file"]
    assert "Traceback" not in none.output


def test_probe_list_columns_line_up(trained):
    from vitdex.library import Library

    with Library.open(trained["library"]) as library:
        spec = library.require_spec()
        probe = library.store.probes.get("colours")
        for name in ("x", "a-much-longer-probe-name"):
            library.store.probes.save(
                spec, name, feature="mean", classes=probe.classes[:2], weights=probe.weights[:2],
                bias=probe.bias[:2], metrics={**probe.metrics, "val_accuracy": 0.5},
            )  # fmt: skip
    try:
        lines = run("probe", "list", "--library", trained["library"]).stdout.splitlines()
        header, *rows = lines
        assert len(rows) == 3
        for column in ("labels", "feature", "val accuracy", "stored predictions", "created"):
            start = header.index(column)
            for row in rows:  # every column's cell starts where its heading does
                assert row[start - 2 : start] == "  " and row[start] != " ", (column, lines)
    finally:
        for name in ("x", "a-much-longer-probe-name"):
            run("probe", "delete", name, "--library", trained["library"])
