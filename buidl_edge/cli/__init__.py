"""The `buidl-edge` command. Commands stay thin: parse, call one function, print.

`base` holds the group, its one error boundary, the shared options and the admin store; each
other module adds its commands to the group when the group first looks one of them up
(`base.COMMAND_MODULES`), so a command loads only its own module. Heavy modules load inside the
commands, so that `worker` can patch the standard library for gevent before anything else does.
"""
from buidl_edge.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="buidl-edge")
