"""dupes: exact and near-duplicate groups, with a suggested keeper each. Never deletes or moves."""

from __future__ import annotations

import click

from vitdex.cli.common import (
    Cosine,
    emit_json,
    feature_option,
    json_option,
    library_option,
    open_library,
    stderr_progress,
)


@click.command()
@library_option
@click.option(
    "--threshold",
    type=Cosine(),
    default=None,
    help="Cosine (-1 to 1) at or above which two images are near duplicates (default: calibrated"
    " from the library's own scores, see docs/dupes.md).",
)
@feature_option()
@click.option(
    "--under", type=click.Path(file_okay=False), default=None, help="Only images below this folder."
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Neighbours searched per image for near duplicates.",
)
@click.option(
    "--list-others",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the paths of every non-keeper that is still the file that was ingested to this"
    " file, one per line (paths with a line break or not UTF-8 are left out: use --null).",
)
@click.option(
    "-0",
    "--null",
    is_flag=True,
    help="With --list-others: end each path with NUL instead of a newline and write its raw"
    " bytes, so every name survives (like `find -print0`, for `xargs -0`).",
)
@json_option
def dupes(library_path, threshold, feature, under, k, list_others, null, as_json):
    """Groups of identical files (exact) and near-identical images (near).

    Each group suggests one image to keep; nothing is deleted or moved. A near group lists every
    image of its contents, so it can contain an exact group, which is also listed on its own.
    """
    from vitdex.library import display
    from vitdex.library.dupes import find_duplicates, list_file, others

    if null and list_others is None:
        raise click.UsageError("--null goes with --list-others FILE")
    with open_library(library_path) as library, stderr_progress("comparing", "img") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        data = find_duplicates(
            library, threshold=threshold, feature=feature, under=under, k=k, progress=progress
        )
        listed = others(library, data) if list_others is not None else None
    if listed is not None:
        for warning in listed.warnings:
            click.echo(f"warning: {warning}", err=True)
        written = list_file(listed.paths, null=null)
        for path in written.left_out:
            click.echo(
                f"warning: {display(path)!r} not listed: it has a line break or is not UTF-8,"
                " so one path per line would misread it; use --null",
                err=True,
            )
        with open(list_others, "wb") as f:
            f.write(written.data)
        click.echo(f"wrote {written.written} paths to {list_others}", err=True)
    if as_json:
        emit_json(data)
        return
    if not data["groups"]:
        click.echo("no duplicates", err=True)
    for number, group in enumerate(data["groups"], 1):
        click.echo(f"group {number} ({group['kind']}, {len(group['members'])} images)")
        for member in group["members"]:
            mark = "keep" if member["path"] == group["keep"] else "    "
            click.echo(f"  {mark}  {member['score']:.4f}  {display(member['path'])}")
    if data["threshold"] is not None:
        click.echo(
            f"threshold {data['threshold']:.4f} ({data['threshold_source']}); {data['rule']}",
            err=True,
        )


COMMANDS = (dupes,)
