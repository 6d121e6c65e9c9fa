"""vitdex export."""

from __future__ import annotations

import click

from vitdex.cli.common import emit_json, json_option, library_option, open_library, stderr_progress


@click.command()
@click.argument("out", type=click.Path())
@library_option
@click.option(
    "--feature",
    "features",
    metavar="NAME",
    multiple=True,
    help="A stored feature to export (cls, mean, cls-last4, ...); repeat for several. Default:"
    " every feature the library stores.",
)
@click.option(
    "--under", type=click.Path(file_okay=False), default=None, help="Only images below this folder."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "npy"]),
    default="parquet",
    show_default=True,
    help="parquet: one file OUT. npy: a folder OUT in clip-retrieval's layout (autofaiss"
    " reads it).",
)
@json_option
def export(out, library_path, features, under, fmt, as_json):
    """Write the stored vectors and each image's facts to OUT, in image-id order.

    \b
    parquet (one file): columns path, sha256, width, height, format, taken_at, and one column
      per feature (named after it) holding a fixed-size list of float32.
    npy (a folder): OUT/<feature>/emb_0000.npy, emb_0001.npy, ... of up to 100,000 rows of
      float32 each, and OUT/metadata/metadata_0000.parquet, ... with the same rows in the same
      order (path column: image_path). Sorted names give the row order, as autofaiss and
      clip-retrieval read them, e.g. `autofaiss build_index --embeddings=OUT/cls`.

    Vectors are the stored L2-normalised ones that search uses. Paths are text; bytes of a
    name that are not UTF-8 show as U+FFFD. OUT must not exist (for npy, an empty folder will
    do); it appears only once complete. Needs pyarrow: pip install 'vitdex[export]'.
    """
    with open_library(library_path) as library, stderr_progress("exporting", "img") as bar:
        report = library.export(
            out, features=features, under=under, format=fmt, progress=bar.update
        )
    if as_json:
        emit_json(report.to_dict())
        return
    what = "file" if len(report.files) == 1 else "files"
    click.echo(
        f"exported {report.rows} images ({', '.join(report.features)}) to {report.out}:"
        f" {len(report.files)} {what}"
    )
