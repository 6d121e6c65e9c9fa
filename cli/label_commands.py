"""labels and tags: the checkpoint's own labels (its classification head, e.g. ImageNet-1k)."""

from __future__ import annotations

import click

from vitdex.cli.common import emit_json, json_option, library_option, model_options, open_library


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@library_option
@model_options
@click.option(
    "--top", type=click.IntRange(1), default=5, show_default=True, help="How many labels each."
)
@json_option
def labels(images, library_path, model, device, runtime, top, as_json):
    """The model's own labels of each IMAGE with their probabilities, most probable first.

    Library images show the labels stored when they were ingested; other files are embedded
    now. A file that cannot be read is reported on stderr (exit status 1), the others are still
    printed. A model without a classification head has no labels.
    """
    from vitdex.library import display

    with open_library(library_path) as library:
        found = library.labels(images, top=top, model=model, device=device, runtime=runtime)
    good = [item for item in found if item.error is None]
    bad = [item for item in found if item.error is not None]
    if as_json:
        emit_json({
            "labels": [
                {"path": display(item.path),
                 "top": [{"label": x.label, "score": x.score} for x in item.top]}
                for item in good
            ],
            "errors": [{"path": display(item.path), "error": item.error} for item in bad],
        })  # fmt: skip
    else:
        for item in good:
            click.echo(display(item.path))
            for x in item.top:
                click.echo(f"  {x.score:.4f}  {x.label}")
    for item in bad:
        click.echo(f"{display(item.path)}: {item.error}", err=True)
    if bad:
        click.get_current_context().exit(1)


@click.command()
@library_option
@json_option
def tags(library_path, as_json):
    """The labels the library's images have as their top label, with how many have each.

    `vitdex search --tag LABEL` lists those images.
    """
    with open_library(library_path) as library:
        found = library.tags()
    if as_json:
        emit_json({"tags": [{"label": t.label, "count": t.count} for t in found]})
        return
    if not found:
        click.echo(
            "no labels stored: the library's model has no classification head, or its images"
            " were ingested before vitdex stored labels",
            err=True,
        )
    for tag in found:
        click.echo(f"{tag.count}\t{tag.label}")


COMMANDS = (labels, tags)
