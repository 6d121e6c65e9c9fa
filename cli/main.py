"""The `vitdex` command: a thin click layer over vitdex.library.

Heavy libraries (torch, transformers, faiss) are imported inside commands, so `--help` is fast.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from vitdex.cli.common import VitdexGroup


@click.group(cls=VitdexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="vitdex")
def main(verbose: int) -> None:
    """vitdex: a local visual index of your photos (ViT embeddings, SQLite, FAISS).

    Start with `vitdex ingest FOLDER`, then `vitdex search IMAGE`.
    """
    # A possible decompression bomb is refused with a one-line reason per file; Pillow's own
    # warning about it would only repeat that on stderr.
    warnings.filterwarnings("ignore", message=r".*could be decompression bomb")
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def _register() -> None:
    from vitdex.cli import (
        dupes_commands,
        export_commands,
        index_commands,
        label_commands,
        library_commands,
        probe_commands,
        serve_commands,
    )

    for command in (
        *library_commands.COMMANDS,
        index_commands.index,
        *dupes_commands.COMMANDS,
        serve_commands.serve,
        *probe_commands.COMMANDS,
        export_commands.export,
        *label_commands.COMMANDS,
    ):
        main.add_command(command)


_register()
