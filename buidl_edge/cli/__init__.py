"""The `buidl-edge` command. Commands stay thin: parse, call one function, print.

`base` holds the group, its one error boundary, the shared options and the admin store; each
other module adds its commands to the group when the group first looks one of them up
(`base.COMMAND_MODULES`), so a command loads only its own module. Heavy modules load inside the
commands, so that `worker` can patch the standard library for gevent before anything else does;
a `worker` without flags does not load the CLI at all (`worker_entry.py`), so `cli` is looked up
only when asked for.
"""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["cli", "main"]


def main() -> None:
    from buidl_edge.cli.worker_entry import WORKER_WITHOUT_FLAGS, start_worker_without_cli

    if sys.argv[1:] == WORKER_WITHOUT_FLAGS:
        sys.exit(start_worker_without_cli())
    from buidl_edge.cli.base import cli

    cli(prog_name="buidl-edge")


def __getattr__(name: str) -> Any:
    """`from buidl_edge.cli import cli`: the click group, loaded on first use."""
    if name == "cli":
        from buidl_edge.cli.base import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
