"""`simulate` and `demo`: the bundled fake Slack, alone or playing a scripted conversation."""
from __future__ import annotations

import os
import sys

import click

from buidl_edge.cli.base import also_expects, cli


@cli.command()
@click.option("--host", default=None, help="Loopback address to listen on (default: BUIDL_SIM_URL's, else 127.0.0.1).")
@click.option("--port", "-p", type=int, default=None,
              help="Port; 0 picks a free one (default: BUIDL_SIM_URL's, else 8765).")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the bound port here once listening.")
@also_expects(OSError, "simulator: ")  # the port is taken, the address is not ours, the ready file unwritable
def simulate(host: str | None, port: int | None, ready_file: str | None) -> None:
    """Run the bundled fake Slack alone: the Web API, Socket Mode, response_urls, and a control
    API (GET /_sim/ lists it). It takes any xapp- and xoxb- token, and prints at start what to
    export to point a worker at it. Stop it with Ctrl-C.

    \b
    buidl-edge simulate &                      # then, in this shell:
    eval "$(buidl-edge sim env)"               # SLACK_API_URL and tokens made up now
    BUIDL_APP=hello:app buidl-edge worker &    # your bot, connected to it
    buidl-edge sim mention "hello"             # drive it: see `buidl-edge sim --help`
    """
    from buidl_edge.sandbox.simulator import serve
    from buidl_edge.sandbox.simulator.access import SIM_URL_VARIABLE, listen_address

    try:
        default_host, default_port = listen_address(os.environ.get(SIM_URL_VARIABLE))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    serve(host or default_host, default_port if port is None else port, ready_file)


@cli.command()
def demo() -> None:
    """Play a scripted conversation against the simulator; no tokens, no network needed."""
    from buidl_edge.sandbox.demo import run_demo

    sys.exit(run_demo(click.echo))
