"""A local fake Slack (Web API + Socket Mode) for the demo, tests and benchmarks.

Importing this package does not import gevent (client.py is used from plain
processes); `serve` patches and imports the server side on first use.
"""
from __future__ import annotations


def serve(host: str, port: int, ready_file: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT. Port 0 picks a free port; `ready_file` gets the port."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    from .server import run

    run(host, port, ready_file)


__all__ = ["serve"]
