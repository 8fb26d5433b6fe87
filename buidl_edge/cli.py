"""The `buidl-edge` command. Thin: parse, call, print. Heavy modules load inside commands,
so that `worker` can patch the standard library for gevent before anything else does."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from buidl_edge.config import ConfigError, Settings, load_settings


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """buidl-edge: the Slack Socket Mode edge of Buidl.

    Tokens come from SLACK_APP_TOKEN (xapp-) and SLACK_BOT_TOKEN (xoxb-).
    Try `buidl-edge demo` to see it work against the bundled simulator.
    """


@cli.command()
@click.option("--connections", "-c", type=click.IntRange(1, 10), default=None,
              help="Socket Mode connections in this process (default BUIDL_CONNECTIONS or 1).")
@click.option("--app", "app_spec", default=None, metavar="MODULE:ATTR",
              help="Handler app to run (default BUIDL_APP or the Buidl bot).")
def worker(connections: int | None, app_spec: str | None) -> None:
    """Run one worker process: connections, handlers and reply sender, until SIGTERM."""
    from buidl_edge import worker as worker_module  # patches for gevent first

    settings = _settings(connections=connections, app_spec=app_spec)
    from buidl_edge.app import AppError

    try:
        code = worker_module.run_worker(settings)
    except AppError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", "-p", type=int, default=8765, show_default=True, help="Port; 0 picks a free one.")
@click.option("--ready-file", type=click.Path(dir_okay=False), default=None,
              help="Write the bound port here once listening.")
def simulate(host: str, port: int, ready_file: str | None) -> None:
    """Run the bundled fake Slack (Web API + Socket Mode + control API) alone."""
    from buidl_edge.simulator import serve

    serve(host, port, ready_file)


@cli.command()
def demo() -> None:
    """Play a scripted conversation against the simulator; no tokens, no network needed."""
    from buidl_edge.demo import run_demo

    sys.exit(run_demo(click.echo))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show_config(as_json: bool) -> None:
    """Print the resolved settings with tokens masked."""
    values = _settings().redacted()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        click.echo(f"{key.ljust(width)}  {value}")


def main() -> None:
    cli(prog_name="buidl-edge")
