"""The `buidl-edge` command. Commands stay thin: parse, call one function, print.

`base` holds the group, its one error boundary, the shared options and the admin store; each
other module adds its commands to the group when imported here. Heavy modules load inside the
commands, so that `worker` can patch the standard library for gevent before anything else does.
"""
from buidl_edge.cli import admin, checks, run, sandbox, send, sim, tokens  # noqa: F401 (they register commands)
from buidl_edge.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="buidl-edge")
