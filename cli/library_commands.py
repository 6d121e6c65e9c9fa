"""ingest, search and status."""

from __future__ import annotations

from contextlib import ExitStack

import click

from vitdex.cli.common import (
    FEATURES_HELP,
    Cosine,
    emit_json,
    feature_option,
    json_option,
    library_option,
    model_options,
    open_library,
    parse_features,
    stderr_progress,
)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@library_option
@model_options
@feature_option(None)
@click.option(
    "--features",
    "features",
    metavar="A,B,...",
    callback=parse_features,
    help="What a new library stores, comma-separated (default: cls,mean, and pooler when the"
    f" checkpoint has trained pooler weights). {FEATURES_HELP}. Chosen once: an existing library"
    " keeps its own and refuses others.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Images per model forward (default: 16 on CPU, 64 on a GPU).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Decode threads (default: a split of the CPU cores with the model).",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.option(
    "--prune",
    is_flag=True,
    help="Remove gone images even when more than half of a folder's images are gone (without"
    " it they are kept: an unmounted drive looks like an empty folder).",
)
@click.option("--wait", is_flag=True, help="Wait for another running ingest instead of failing.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the embed stage runs: this process, or a Ray cluster (pip install 'vitdex[ray]';"
    " every worker must read PATHS at the same paths).",
)
@click.option(
    "--ray-address",
    default=None,
    help="Ray cluster to use with --engine ray (auto, HOST:6379, ray://HOST:10001); default: a"
    " local Ray instance, or $RAY_ADDRESS.",
)
@click.option(
    "--ray-actors",
    type=click.IntRange(1),
    default=None,
    help="Model actors with --engine ray (default: one per node, using its CPUs).",
)
@json_option
def ingest(
    paths,
    library_path,
    model,
    device,
    runtime,
    feature,
    features,
    batch_size,
    workers,
    dry_run,
    prune,
    wait,
    engine,
    ray_address,
    ray_actors,
    as_json,
):
    """Add, update, move and remove the images below PATHS.

    Incremental: unchanged files are not opened again, moved files keep their vectors, deleted
    files leave the library. It plans first (stat and hash), then embeds with a known total.
    Bad files are reported and never stop the run.
    """
    if engine != "ray" and (ray_address or ray_actors):
        raise click.UsageError("--ray-address and --ray-actors need --engine ray")
    with ExitStack() as stack:
        library = stack.enter_context(open_library(library_path, create=not dry_run))
        bars = Bars(stack)
        executor = None
        if engine == "ray":
            from vitdex.library.ray_executor import RayExecutor

            executor = RayExecutor(library, address=ray_address, actors=ray_actors,
                                   batch_size=batch_size, device=device)  # fmt: skip
        report = library.ingest(
            paths,
            model=model,
            device=device,
            runtime=runtime,
            batch_size=batch_size,
            workers=workers,
            dry_run=dry_run,
            prune=prune,
            wait=wait,
            index_features=(feature,) if feature else (),
            features=features,
            progress=bars.update,
            executor=executor,
        )
    data = report.to_dict()
    if as_json:
        emit_json(data)
    else:
        verb = "would be " if dry_run else ""
        click.echo(
            ", ".join(
                f"{data[key]} {verb}{key}"
                for key in ("added", "updated", "moved", "unchanged", "removed")
            )
            + f", {len(report.failed)} failed"
        )
        if report.failed_earlier:
            click.echo(f"{len(report.failed_earlier)} failed earlier (unchanged since; see status)")
        for failure in report.failed:
            click.echo(f"  failed: {failure['path']}: {failure['error']}")
    if report.int8_check:
        from vitdex.library.int8_check import Int8Check

        for line in Int8Check.from_dict(report.int8_check).lines():  # the warning included
            click.echo(line, err=True)
    for held in report.held_back:
        click.echo(
            f"warning: {held['gone']} of the {held['images']} images below {held['folder']} are"
            " gone; nothing was removed there (is a drive unmounted?). If they are really gone,"
            " run again with --prune.",
            err=True,
        )
    if report.held_back:
        raise SystemExit(1)


class Bars:
    """Progress on stderr: files found while planning, then embedding with a total and ETA."""

    def __init__(self, stack: ExitStack):
        self.stack = stack
        self.found = stack.enter_context(stderr_progress("planning", "file"))
        self.embedding = None

    def update(self, event: str, n: int) -> None:
        if event == "found":
            self.found.update(n)
        elif event == "to-embed":
            self.found.close()
            self.embedding = self.stack.enter_context(stderr_progress("embedding", "img", n))
        elif event == "embedded" and self.embedding is not None:
            self.embedding.update(n)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@library_option
@click.option("--wait", is_flag=True, help="Wait for another writer instead of failing.")
@json_option
def forget(paths, library_path, wait, as_json):
    """Remove the images at or below PATHS from the library, whether or not they still exist
    (a deleted folder, a drive you no longer have). The files themselves are not touched."""
    with open_library(library_path) as library:
        removed = library.forget(paths, wait=wait)
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"{removed} removed")


@click.command()
@click.argument("image", type=click.Path(), required=False)
@library_option
@model_options
@feature_option()
@click.option(
    "-k", "k", type=click.IntRange(1), default=10, show_default=True, help="How many results."
)
@click.option(
    "--min-score",
    type=Cosine(),
    default=None,
    help="Only results with cosine ≥ this (-1 to 1).",
)
@click.option(
    "--under", type=click.Path(file_okay=False), default=None, help="Only images below this folder."
)
@click.option(
    "--probe",
    "probe_name",
    default=None,
    help="With --label: only images this probe labelled L (`probe predict NAME --all`).",
)
@click.option("--label", default=None, help="The label --probe must have given.")
@click.option(
    "--tag",
    default=None,
    metavar="LABEL",
    help="Only images whose top label (the model's own, see `vitdex tags`) is LABEL, any case."
    " Without IMAGE: those images, most probable first.",
)
@click.option("--paths-only", is_flag=True, help="Print only the paths, one per line (for pipes).")
@json_option
def search(
    image,
    library_path,
    model,
    device,
    runtime,
    feature,
    k,
    min_score,
    under,
    probe_name,
    label,
    tag,
    paths_only,
    as_json,
):
    """Images that look like IMAGE, most similar first (cosine similarity).

    IMAGE may be in the library (its stored vector is used and it is left out of the results)
    or any image file (embedded on the fly). Each result is a line "SCORE<TAB>PATH". With
    --tag LABEL and no IMAGE: the images whose top label is LABEL, SCORE being its probability.
    """
    if (probe_name is None) != (label is None):
        raise click.UsageError("--probe and --label go together")
    if image is None and tag is None:
        raise click.UsageError("give an IMAGE, a --tag LABEL, or both")
    if image is None and probe_name is not None:
        raise click.UsageError("--probe needs an IMAGE")
    with open_library(library_path) as library:
        allowed_ids = None
        if probe_name is not None:
            from vitdex.probes.store import ids_predicted_as

            allowed_ids = ids_predicted_as(library, probe_name, label)
        data = library.search(
            image,
            k=k,
            feature=feature,
            min_score=min_score,
            under=under,
            allowed_ids=allowed_ids,
            model=model,
            device=device,
            runtime=runtime,
            tag=tag,
        )
    if as_json:
        emit_json(data)
        return
    from vitdex.library import display

    if not data["results"]:
        hint = f" with the tag {tag!r} (`vitdex tags` lists the labels present)" if tag else ""
        click.echo(f"no results{hint}", err=True)
    for hit in data["results"]:
        path = display(hit["path"])
        click.echo(path if paths_only else f"{hit['score']:.4f}\t{path}")


@click.command()
@library_option
@json_option
def status(library_path, as_json):
    """What the library holds: counts, model and spec, indexes, failed files."""
    with open_library(library_path) as library:
        data = library.status()
    if as_json:
        emit_json(data)
        return
    click.echo(f"library   {data['library']}")
    if data["read_only"]:
        click.echo(f"access    read-only: {data['read_only_reason']}")
    click.echo(f"images    {data['images']} ({data['distinct_contents']} distinct contents)")
    if data["spec"] is None:
        click.echo("model     none yet: the library is empty (run `vitdex ingest PATH`)")
    else:
        runtime = "int8 (ONNX Runtime)" if "int8" in data["spec"]["runtime"] else "fp32 (torch)"
        click.echo(f"model     {data['model']} @ {data['revision']}")
        click.echo(f"runtime   {runtime}")
    click.echo(f"features  {', '.join(data['features'])}")
    for feature, entry in data["index"].items():
        if entry["file"] is None:
            click.echo(f"index     {feature}: not built yet (built by the next ingest or search)")
            continue
        if "error" in entry:
            click.echo(f"index     {feature}: {entry['error']}")
            continue
        state = "up to date" if entry["up_to_date"] else "behind the database (catches up on use)"
        click.echo(
            f"index     {feature}: {entry['kind']}, {entry['vectors']} vectors,"
            f" {entry['bytes'] / 1e6:.1f} MB, {state}"
        )
    if data["int8_check"]:
        from vitdex.library.int8_check import Int8Check

        for line in Int8Check.from_dict(data["int8_check"]).lines():
            click.echo(f"int8      {line}")
    click.echo(f"failed    {len(data['failed'])}")
    for failure in data["failed"]:
        click.echo(f"  {failure['path']}: {failure['error']}")


COMMANDS = (ingest, forget, search, status)
