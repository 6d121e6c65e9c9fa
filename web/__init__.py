"""`vitdex serve`: a local, read-only web gallery over a library (Starlette + Jinja2 templates).

Importing this package imports starlette; the CLI imports it only inside `vitdex serve`.
"""

from vitdex.web.app import create_app
from vitdex.web.server import LOOPBACK_HOSTS, allowed_hosts, running

__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "create_app", "running"]
