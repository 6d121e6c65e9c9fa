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
    wait,
    as_json,
):
    """Train probe NAME from labelled images (logistic regression, L2 tuned on a held-out split).

    Labelled images not in the library yet are ingested first; missing or unreadable files are
    reported and skipped.
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
        )
    if as_json:  # skipped rows were logged as warnings on stderr as they were found
        emit_json(data)
        return
    click.echo(
        f"probe {name}: {len(data['classes'])} labels ({', '.join(data['classes'])}),"
        f" feature {feature}, {data['metrics']['examples']} images"
        f" ({len(data['skipped'])} skipped, {data['ingested']} newly ingested)"
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
    _echo_report("validation", metrics["validation"], classes)
    if "test" in metrics:
        _echo_report("test", metrics["test"], classes)
    if "cv" in metrics:
        cv = metrics["cv"]
        _echo_report(
            f"{cv['folds']}-fold cross-validation, accuracy std {cv['accuracy_std']:.3f},",
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
    for row in probes:
        accuracy = row["val_accuracy"]
        usable = "" if row["matches_library_spec"] else "  (other spec: unusable here)"
        click.echo(
            f"{row['name']}  {len(row['classes'])} labels  {row['feature']}"
            f"  val accuracy {accuracy:.3f}  {row['stored_predictions']} stored predictions"
            f"  {row['created_at'][:19]}{usable}"
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

    Images outside the library are embedded on the fly. --all stores the labels, so it waits
    for (with --wait) or refuses to run beside another writer.
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
        return
    if all_images:
        click.echo(
            f"stored {data['stored']} predictions of probe {name}: "
            + ", ".join(f"{label} {n}" for label, n in data["counts"].items())
        )
        return
    for row in data["predictions"]:
        ranked = "  ".join(f"{t['label']} {t['score']:.3f}" for t in row["top"])
        click.echo(f"{row['path']}  {ranked}")


COMMANDS = (probe,)
