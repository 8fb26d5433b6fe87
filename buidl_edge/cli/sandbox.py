"""`simulate` and `demo`: the bundled fake Slack, alone or playing a scripted conversation."""
from __future__ import annotations

import sys

import click

from buidl_edge.cli.base import also_expects, cli


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", "-p", type=int, default=8765, show_default=True, help="Port; 0 picks a free one.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the bound port here once listening.")
@also_expects(OSError, "simulator: ")  # the port is taken, the address is not ours, the ready file unwritable
def simulate(host: str, port: int, ready_file: str | None) -> None:
    """Run the bundled fake Slack (Web API + Socket Mode + control API) alone."""
    from buidl_edge.simulator import serve

    serve(host, port, ready_file)


@cli.command()
def demo() -> None:
    """Play a scripted conversation against the simulator; no tokens, no network needed."""
    from buidl_edge.demo import run_demo

    sys.exit(run_demo(click.echo))
