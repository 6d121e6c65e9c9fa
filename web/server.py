"""Which Host headers the gallery answers, and running it in a background thread (for tests and
benchmarks: nothing else needs a second process)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# The names this machine's loopback answers to; IPv6 literals are bracketed, as in a Host header.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
WILDCARD_BINDS = {"0.0.0.0", "::", ""}


def allowed_hosts(bind: str) -> list[str] | None:
    """The Host headers a server bound to `bind` answers: the bound name plus loopback's names.

    That refuses DNS rebinding (a web page whose name now resolves to this server sends its own
    name as Host) for every bind, loopback (127.0.0.2, ::1) or LAN address alike. A wildcard
    bind (0.0.0.0, ::) asked to be reached by any of the machine's names: None, answer any Host
    (the CLI warns).
    """
    if bind.strip() in WILDCARD_BINDS:
        return None
    name = bind.strip().lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return list(dict.fromkeys([name, *LOOPBACK_HOSTS]))


def host_name(header: str) -> str:
    """The name in a Host header, port dropped: `[::1]:8000` -> `[::1]`, `a.b:80` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1] if end > 0 else ""
    return header.split(":", 1)[0]


class HostCheck:
    """Refuse requests whose Host is not allowed (Starlette's TrustedHostMiddleware cannot
    parse a bracketed IPv6 Host, so it would refuse every request to a server on ::1)."""

    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.allowed = {host.lower() for host in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            host_name(Headers(scope=scope).get("host", "")) not in self.allowed
        ):
            await PlainTextResponse("Invalid host header", 400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def running(app, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Serve `app` on host:port (default: a free port) while the block runs; yields its URL."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
