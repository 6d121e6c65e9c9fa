"""dupes: exact and near-duplicate groups, with a suggested keeper each. Never deletes or moves."""

from __future__ import annotations

import click

from vitdex.cli.common import (
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
    type=click.FloatRange(-1.0, 1.0),
    default=None,
    help="Cosine at or above which two images are near duplicates (default: calibrated"
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
    help="Write the paths of every non-keeper to this file, one per line.",
)
@json_option
def dupes(library_path, threshold, feature, under, k, list_others, as_json):
    """Groups of identical files (exact) and near-identical images (near).

    Each group suggests one image to keep; nothing is deleted or moved. A near group lists every
    image of its contents, so it can contain an exact group, which is also listed on its own.
    """
    from vitdex.library.dupes import find_duplicates, others

    with open_library(library_path) as library, stderr_progress("comparing", "img") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        data = find_duplicates(
            library, threshold=threshold, feature=feature, under=under, k=k, progress=progress
        )
    if list_others is not None:
        paths = others(data)
        with open(list_others, "w", encoding="utf-8") as f:
            f.writelines(f"{p}\n" for p in paths)
        click.echo(f"wrote {len(paths)} paths to {list_others}", err=True)
    if as_json:
        emit_json(data)
        return
    if not data["groups"]:
        click.echo("no duplicates")
    for number, group in enumerate(data["groups"], 1):
        click.echo(f"group {number} ({group['kind']}, {len(group['members'])} images)")
        for member in group["members"]:
            mark = "keep" if member["path"] == group["keep"] else "    "
            click.echo(f"  {mark}  {member['score']:.4f}  {member['path']}")
    if data["threshold"] is not None:
        click.echo(
            f"threshold {data['threshold']:.4f} ({data['threshold_source']}); {data['rule']}",
            err=True,
        )


COMMANDS = (dupes,)
