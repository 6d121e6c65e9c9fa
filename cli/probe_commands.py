"""`vitdex probe`: train, list, show, delete and predict with linear probes."""

from __future__ import annotations

import click

from vitdex.cli.common import (
    emit_json,
    feature_option,
    json_option,
    library_option,
    model_options,
    open_library,
    stderr_progress,
)


@click.group()
def probe() -> None:
    """Linear probes: classifiers trained on the library's stored vectors.

    Train one from labelled images, label new images, or restrict `vitdex search` to a label.
    """


def wait_option(func):
    return click.option(
        "--wait", is_flag=True, help="Wait for another writer (e.g. an ingest) instead of failing."
    )(func)


def _examples(labels_csv: str | None, folders_root: str | None):
    from vitdex.probes.labels import read_csv_labels, read_folder_labels

    return read_csv_labels(labels_csv) if labels_csv else read_folder_labels(folders_root)


@probe.command()
@click.argument("name")
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(dir_okay=False),
    help="CSV with a `path,label` header; relative paths are relative to the CSV.",
)
@click.option(
    "--folders",
    "folders_root",
    type=click.Path(file_okay=False),
    help="Folder whose subfolders are the labels (ROOT/LABEL/IMAGE).",
)
@library_option
@model_options
@feature_option()
@click.option(
    "--test",
    "test_csv",
    type=click.Path(dir_okay=False),
    help="Independent `path,label` CSV to score the probe on.",
)
@click.option(
    "--cv",
    type=click.IntRange(2),
    default=None,
    help="Also estimate accuracy by stratified K-fold cross-validation.",
)
@click.option("--balanced", is_flag=True, help="Weight classes inversely to their frequency.")
@click.option("--replace", is_flag=True, help="Replace an existing probe of this name.")
@click.option(
    "--no-ingest",
    is_flag=True,
    help="Embed labelled images the library lacks on the fly, without adding them to it"
    " (by default they are ingested, and then show up in search, dupes and the gallery).",
)
@wait_option
@json_option
def train(
    name,
    labels_csv,
    folders_root,
    library_path,
    model,
    device,
    runtime,
    feature,
    test_csv,
    cv,
    balanced,
    replace,
    no_ingest,
    wait,
    as_json,
):
    """Train probe NAME from labelled images (logistic regression, L2 tuned on a held-out split).

    Labelled images not in the library yet are ingested first, for good (use --no-ingest to keep
    them out); missing or unreadable files are reported and skipped. Identical files and near
    duplicates always fall on the same side of every split.
    """
    from vitdex.probes.labels import read_csv_labels
    from vitdex.probes.train import train_probe

    if (labels_csv is None) == (folders_root is None):
        raise click.UsageError("give exactly one of --labels CSV or --folders ROOT")
    examples = _examples(labels_csv, folders_root)
    test_examples = read_csv_labels(test_csv) if test_csv else None
    with open_library(library_path, create=True) as library:
        data = train_probe(
            library,
            name,
            examples,
            feature=feature,
            test_examples=test_examples,
            cv=cv,
            balanced=balanced,
            replace=replace,
            model=model,
            device=device,
            runtime=runtime,
            wait=wait,
            ingest=not no_ingest,
        )
    if as_json:  # skipped rows were logged as warnings on stderr as they were found
        emit_json(data)
        return
    click.echo(
        f"probe {name}: {len(data['classes'])} labels ({', '.join(data['classes'])}),"
        f" feature {feature}, {data['metrics']['examples']} images"
        f" ({len(data['skipped'])} skipped)"
    )
    if data["ingested"]:
        click.echo(
            f"{data['ingested']} labelled images were added to the library"
            " (use --no-ingest to keep them out)"
        )
    if data["embedded_only"]:
        click.echo(
            f"{data['embedded_only']} labelled images were embedded for this probe only"
            " (not added to the library)"
        )
    _echo_metrics(data["metrics"], data["classes"])


def _echo_report(title: str, report: dict, classes: list[str]) -> None:
    line = (
        f"{title} ({report['n']} images): accuracy {report['accuracy']:.3f},"
        f" balanced accuracy {report['balanced_accuracy']:.3f}"
    )
    if "top5_accuracy" in report:
        line += f", top-5 {report['top5_accuracy']:.3f}"
    click.echo(line)
    if "measured_by" in report:
        click.echo(f"  measured on {report['measured_by']}")
    width = max(8, *(len(label) for label in classes))
    click.echo(f"  {'label':<{width}}  precision  recall     f1  support")
    for label in classes:
        row = report["per_class"][label]
        click.echo(
            f"  {label:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}"
            f"  {row['f1']:5.3f}  {row['support']:7d}"
        )
    click.echo("  confusion (rows: true label, columns: predicted, in the order above)")
    for label, counts in zip(classes, report["confusion"], strict=True):
        click.echo(f"  {label:<{width}}  " + " ".join(f"{c:5d}" for c in counts))


def _echo_metrics(metrics: dict, classes: list[str]) -> None:
    reg = metrics["regularization"]
    tried = ", ".join(
        f"{row['C']:g}: {row['val_' + reg['selected_by']]:.3f}" for row in reg["sweep"]
    )
    click.echo(
        f"C {reg['C']:g} (l2 {reg['l2']:.2g}), chosen by validation {reg['selected_by']}"
        f" on an inner split; sweep {tried}"
    )
    if "grouping" in metrics:
        grouping = metrics["grouping"]
        click.echo(
            f"splits by content: {grouping['groups']} groups ({grouping['identical']} images"
            f" with an identical copy, {grouping['near']} in near-duplicate groups at cosine"
            f" >= {grouping['threshold']:.4f}) never straddle a split"
        )
    validation = metrics["validation"]
    method = validation.get("method")
    _echo_report(f"validation, {method}" if method else "validation", validation, classes)
    if "test" in metrics:
        _echo_report("test, saved probe on the --test set", metrics["test"], classes)
    if "cv" in metrics:
        cv = metrics["cv"]
        _echo_report(
            f"{cv['folds']}-fold cross-validation (each fold tunes and refits on its training"
            f" part), accuracy std {cv['accuracy_std']:.3f},",
            cv,
            classes,
        )
    click.echo(f"trained in {metrics['train_seconds']:.2f}s")


@probe.command("list")
@library_option
@json_option
def list_command(library_path, as_json):
    """The library's probes."""
    from vitdex.probes.store import list_probes

    with open_library(library_path) as library:
        probes = list_probes(library)
    if as_json:
        emit_json({"probes": probes})
        return
    if not probes:
        click.echo("no probes (train one with `vitdex probe train NAME --folders ROOT`)")
        return
    rows = [_list_row(row) for row in probes]
    header = ("name", "labels", "feature", "val accuracy", "stored predictions", "created", "")
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    for cells in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        )


def _list_row(row: dict) -> tuple[str, ...]:
    accuracy = row["val_accuracy"]
    return (
        row["name"],
        str(len(row["classes"])),
        row["feature"],
        "-" if accuracy is None else f"{accuracy:.3f}",
        str(row["stored_predictions"]),
        row["created_at"][:19],
        "" if row["matches_library_spec"] else "(other spec: unusable here)",
    )


@probe.command()
@click.argument("name")
@library_option
@json_option
def show(name, library_path, as_json):
    """Labels, metrics and regularisation sweep of probe NAME."""
    from vitdex.probes.store import get_probe, summary

    with open_library(library_path) as library:
        saved = get_probe(library, name, check_spec=False)
        data = summary(saved, library.require_spec().key)
    data["metrics"] = saved.metrics
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"probe {name}: {len(data['classes'])} labels ({', '.join(data['classes'])}),"
        f" feature {data['feature']}, created {data['created_at'][:19]}"
    )
    click.echo(
        f"spec {data['spec_key']}"
        + ("" if data["matches_library_spec"] else " (not this library's: unusable here)")
    )
    click.echo(f"stored predictions {data['stored_predictions']}")
    _echo_metrics(saved.metrics, saved.classes)


@probe.command()
@click.argument("name")
@library_option
@wait_option
@json_option
def delete(name, library_path, wait, as_json):
    """Delete probe NAME and its stored predictions."""
    from vitdex.probes.store import delete_probe

    with open_library(library_path) as library:
        delete_probe(library, name, wait=wait)
    if as_json:
        emit_json({"deleted": name})
    else:
        click.echo(f"deleted probe {name}")


@probe.command()
@click.argument("name")
@click.argument("images", nargs=-1, type=click.Path())
@click.option(
    "--all",
    "all_images",
    is_flag=True,
    help="Label every image in the library and store the labels (for search --label).",
)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="How many labels to list per image, most probable first.",
)
@library_option
@model_options
@wait_option
@json_option
def predict(name, images, all_images, top, library_path, model, device, runtime, wait, as_json):
    """Label IMAGES (or --all library images) with probe NAME, with softmax probabilities.

    Images outside the library are embedded on the fly. An image that is missing or cannot be
    read gets one line on stderr (its path and why; in --json, an "errors" list) and the others
    are still labelled: the exit status is 0 when at least one image was labelled, 1 when none
    was. --all stores the labels, so it waits for (with --wait) or refuses to run beside another
    writer.
    """
    from vitdex.probes.predict import predict_all, predict_paths

    if bool(images) == all_images:
        raise click.UsageError("give IMAGE paths or --all, not both")
    with open_library(library_path) as library:
        if all_images:
            with stderr_progress("labelling", "img") as bar:
                data = predict_all(library, name, top=top, progress=bar.update, wait=wait)
        else:
            data = predict_paths(
                library, name, images, top=top, model=model, device=device, runtime=runtime
            )
    if as_json:
        emit_json(data)
    elif all_images:
        click.echo(
            f"stored {data['stored']} predictions of probe {name}: "
            + ", ".join(f"{label} {n}" for label, n in data["counts"].items())
        )
    else:
        for error in data["errors"]:
            click.echo(f"{error['path']}: {error['reason']}", err=True)
        for row in data["predictions"]:
            ranked = "  ".join(f"{t['label']} {t['score']:.3f}" for t in row["top"])
            click.echo(f"{row['path']}  {ranked}")
    if not all_images and not data["predictions"]:
        click.get_current_context().exit(1)  # every image was bad: each said why above


COMMANDS = (probe,)
