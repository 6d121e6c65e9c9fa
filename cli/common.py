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


FEATURES_HELP = (
    "cls (CLS token), mean (mean of patch tokens), pooler (trained pooler only), cls-last4 (CLS"
    " of the last 4 blocks, concatenated: DINO's linear-eval input), cls-N / mean-N (block N,"
    " from 1), cls-lastK / mean-lastK"
)


def _spelled_like_a_feature(name: str | None, param: click.Parameter | None = None) -> None:
    from vitdex.library import FEATURE_NAMES, is_feature_name

    if name is not None and not is_feature_name(name):
        raise click.BadParameter(f"{name!r} is not a feature; features are {FEATURE_NAMES}",
                                 param=param)  # fmt: skip


def _check_feature(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    _spelled_like_a_feature(value, param)
    return value


def feature_option(default: str | None = "cls") -> Callable:
    """--feature NAME: free text, spelled like a feature (else a usage error); the library
    checks it against the features it stores."""
    return click.option(
        "--feature",
        metavar="NAME",
        callback=_check_feature,
        default=default,
        show_default=default is not None,
        help=f"Which stored vector to use: {FEATURES_HELP}. The library refuses one it does"
        " not store.",
    )


def parse_features(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    """--features a,b,c -> ("a", "b", "c"), each spelled like a feature; the embedder checks
    that the model can make them."""
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise click.BadParameter("name at least one feature, e.g. cls,mean,cls-last4", param=param)
    for name in names:
        _spelled_like_a_feature(name, param)
    return names


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
