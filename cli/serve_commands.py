"""vitdex serve: the local web gallery."""

from __future__ import annotations

import click

from vitdex.cli.common import feature_option, library_option, open_library


@click.command()
@library_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; only this machine can connect unless you name another. Requests"
    " must name this host (or localhost) in their Host header; 0.0.0.0 or :: answers any name"
    " (LAN access, with a warning).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@feature_option()
def serve(library_path, host, port, feature):
    """Browse the library in a web browser: thumbnails, neighbours, query by image (read-only)."""
    import uvicorn

    from vitdex.web import allowed_hosts, create_app

    with open_library(library_path) as library:
        library.check_feature(feature)
        _check_port_free(host, port)
        # Refuse foreign Host headers (DNS rebinding from a web page) on every specific bind.
        hosts = allowed_hosts(host)
        if hosts is None:
            click.echo(
                f"warning: bound to every interface ({host}): any machine that reaches port"
                f" {port} can browse the library, whatever name it uses",
                err=True,
            )
        app = create_app(library, feature=feature, allowed_hosts=hosts)
        shown = f"[{host}]" if ":" in host else host
        click.echo(
            f"vitdex gallery of {library.folder}: http://{shown}:{port}/ (Ctrl-C stops)", err=True
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_port_free(host: str, port: int) -> None:
    """Say "port N is in use" (exit 1) before uvicorn would print its own error and exit 3."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"port {port} is in use on {host}: stop what uses it, or pick another"
                    " with --port"
                ) from None
            # Anything else (an address this machine does not have): uvicorn reports it.
