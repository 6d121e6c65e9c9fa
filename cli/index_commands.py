"""vitdex index rebuild / eval."""

from __future__ import annotations

import click

from vitdex.cli.common import emit_json, feature_option, json_option, library_option, open_library


@click.group()
def index() -> None:
    """Inspect and rebuild the FAISS indexes (derived from the database, rebuilt when stale)."""


@index.command()
@library_option
@feature_option()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["auto", "flat", "hnsw", "ivfsq8", "ivfpq"]),
    default="auto",
    show_default=True,
    help="Index type; auto is exact Flat while small, IVF-SQ8 past the documented size.",
)
@click.option("--wait", is_flag=True, help="Wait for another writer instead of failing.")
@json_option
def rebuild(library_path, feature, kind, wait, as_json):
    """Rebuild the index from the vectors stored in the database (the type is remembered once
    the build succeeds)."""
    with open_library(library_path) as library:
        library.require_spec()
        built = library.rebuild_index(feature, kind, wait=wait)
        data = {
            "feature": feature,
            "kind": built.kind,
            "vectors": built.ntotal,
            "params": built.params,
        }
    if as_json:
        emit_json(data)
    else:
        click.echo(f"rebuilt {feature} index: {data['kind']}, {data['vectors']} vectors")


@index.command(name="eval")
@library_option
@feature_option()
@click.option(
    "--sample",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="How many stored vectors to use as queries.",
)
@click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True)
@json_option
def evaluate(library_path, feature, sample, k, as_json):
    """Recall@k of the current index against exact search, on stored vectors."""
    with open_library(library_path) as library:
        library.require_spec()
        data = library.evaluate_index(feature, sample=sample, k=k)
    if as_json:
        emit_json(data)
    else:
        click.echo(
            f"{feature} index ({data['kind']}, {data['vectors']} vectors): recall@{k} ="
            f" {data['recall']:.4f} on {data['sample']} queries"
        )
