"""Options shared by the commands, error translation and output helpers."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

import click

from vitdex.library.config import DATABASE_ENV, LIBRARY_ENV, MODEL_ENV


class VitdexGroup(click.Group):
    """Turns the library's own errors into a clean message and exit 1 (usage errors stay 2)."""

    def invoke(self, ctx: click.Context):
        from vitdex.library.errors import VitdexError

        try:
            return super().invoke(ctx)
        except VitdexError as exc:
            if ctx.meta.get(JSON_META):  # a machine reads stdout: the error goes there too
                emit_json({"error": str(exc)})
            raise click.ClickException(str(exc)) from exc


DATABASE_META = "vitdex.database"


def _remember_database(ctx: click.Context, _param, value: str | None) -> str | None:
    if value:
        ctx.meta[DATABASE_META] = value  # read by open_library
    return value


def library_option(func: Callable) -> Callable:
    """--library and --database: where a library's files and its metadata live."""
    func = click.option(
        "--database",
        metavar="URL",
        expose_value=False,
        callback=_remember_database,
        help=f"Keep the library's metadata and vectors in this PostgreSQL database, e.g."
        f" postgresql+psycopg://user@host/vitdex (default: ${DATABASE_ENV}, else a SQLite file"
        " in the library folder). The folder keeps this machine's index files and caches.",
    )(func)
    return click.option(
        "--library",
        "library_path",
        type=click.Path(file_okay=False),
        help=f"Library folder (default: ${LIBRARY_ENV}, else your user data folder).",
    )(func)


def model_options(func: Callable) -> Callable:
    func = click.option(
        "--runtime",
        type=click.Choice(["fp32", "int8"]),
        default=None,
        help="CPU inference: fp32 (torch) or int8 (ONNX Runtime, about 2x faster, needs"
        " vitdex[fast]; its vectors form their own spec). Default: the library's, else fp32.",
    )(func)
    func = click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda", "mps"]),
        default="auto",
        show_default=True,
        help="Where the model runs.",
    )(func)
    return click.option(
        "--model",
        default=None,
        help=f"Hub id or local folder of a ViT checkpoint (default: ${MODEL_ENV}, else the"
        " library's model, else google/vit-base-patch16-224).",
    )(func)


class Cosine(click.FloatRange):
    """A cosine similarity: a number from -1 to 1 (NaN, which every range check lets through,
    refused too)."""

    name = "cosine"

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number from -1 to 1", param, ctx)
        return number


JSON_META = "vitdex.json"


def _remember_json(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True  # meta is shared with the group, which reports errors
    return value


def json_option(func: Callable) -> Callable:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_remember_json,
        help='Print JSON instead of text (errors too: {"error": ...} on stdout).',
    )(func)


def feature_option(default: str = "cls") -> Callable:
    return click.option(
        "--feature",
        type=click.Choice(["cls", "mean", "pooler"]),
        default=default,
        show_default=True,
        help="Which stored vector to use: CLS token, mean of patch tokens, or trained pooler.",
    )


def open_library(library_path: str | None, *, create: bool = False):
    from vitdex.library import Library

    ctx = click.get_current_context(silent=True)
    database = ctx.meta.get(DATABASE_META) if ctx is not None else None
    return Library.open(library_path, database=database, create=create)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def stderr_progress(desc: str, unit: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(
        desc=desc,
        unit=unit,
        total=total,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
        disable=None,
    )
