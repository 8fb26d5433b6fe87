"""The worker command's body, and the way in that skips the CLI for a worker without flags.

`run` starts every worker as `python -m buidl_edge worker`, with no flags (the environment says
everything); a Procfile's `buidl-edge worker` usually has none either. Such a worker starts here
without click and the command group, which a long-lived process would otherwise keep, 1.3 MB of
its RSS (issue 26). Click loads only to say an error the CLI would have said, in the same words.
"""
from __future__ import annotations

from typing import Any

WORKER_WITHOUT_FLAGS = ["worker"]


def start_worker(**flags: Any) -> int:
    """Patch the standard library for gevent, then run one worker until it stops; its exit code."""
    from buidl_edge.runtime.gevent_patch import patch

    patch()  # first: before the worker's modules import sockets, threads or locks
    from buidl_edge.runtime.start import start

    return start(**flags)


def start_worker_without_cli() -> int:
    """`worker` with no flags, outside click, behind the CLI's own error boundary."""
    try:
        return start_worker()
    except Exception as exc:
        from buidl_edge.cli.base import as_click_error

        error = as_click_error(exc)
        if error is None:
            raise
        error.show()
        return error.exit_code
