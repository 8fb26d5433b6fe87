"""A worker's degraded episodes, told to `run`'s supervisord over the worker's own stdout.

Under `run` the dyno's /readyz is served by supervisord's process from the workers' heartbeats in
the store. But a degraded episode is exactly when the store cannot take a heartbeat (a full disk,
a held write lock), so /readyz would go on reading the last heartbeat and answer 200. The worker
says it instead through supervisord's own channel for this, process communication: text between
`<!--XSUPERVISOR:BEGIN-->` and `<!--XSUPERVISOR:END-->` on the child's stdout is not logged but
becomes a PROCESS_COMMUNICATION_STDOUT event, which the watch (stack_watch.py) hears in-process.
The rendered config turns capture on (`stdout_capture_maxbytes`) and sets ENV_FLAG for the
workers, so a worker started any other way never writes the markers into its log.

Pure: no I/O but the one write, no imports of ours.
"""
from __future__ import annotations

import os

ENV_FLAG = "BUIDL_HEALTH_EVENTS"
BEGIN = b"<!--XSUPERVISOR:BEGIN-->"
END = b"<!--XSUPERVISOR:END-->"
PREFIX = "buidl-store "
# The cause travels in one small write (atomic on a pipe, so it never interleaves with a log line).
MAX_CAUSE = 400

# Process name -> the cause of its episode, for the workers of this dyno now degraded. Filled by
# the watch inside supervisord, read by the dyno's /readyz and /metrics in the same process.
degraded_workers: dict[str, str] = {}


def encode(degraded: bool, cause: str) -> bytes:
    line = f"{PREFIX}{'degraded' if degraded else 'ok'} {' '.join(cause.split())[:MAX_CAUSE]}"
    return BEGIN + line.encode("utf-8", "replace") + END


def decode(data: bytes | str) -> tuple[bool, str] | None:
    """(degraded, cause) from an event's data; None for anything else a process may send."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if not text.startswith(PREFIX):
        return None
    state, _, cause = text[len(PREFIX):].partition(" ")
    if state not in ("degraded", "ok"):
        return None
    return state == "degraded", cause


def telling_supervisor() -> bool:
    return os.environ.get(ENV_FLAG) == "1"


def tell_supervisor(degraded: bool, cause: str) -> None:
    """A StoreHealth listener: one write to fd 1, which supervisord reads."""
    try:
        os.write(1, encode(degraded, cause))
    except OSError:  # no reader: nothing to tell
        pass


def heard(process: str, data: bytes | str) -> None:
    """The watch heard a process communication event from `process`."""
    told = decode(data)
    if told is None:
        return
    degraded, cause = told
    if degraded:
        degraded_workers[process] = cause
    else:
        degraded_workers.pop(process, None)


def gone(process: str) -> None:
    """The process exited: whatever it said no longer holds."""
    degraded_workers.pop(process, None)
