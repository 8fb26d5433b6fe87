"""buidl-edge handler apps for scripts/bench.py and scripts/soak.py (BUIDL_APP=edge_apps:…).

The scripts put this folder on PYTHONPATH of the workers they start.

- `bench`: one `message` handler that does nothing, like the peers' listeners,
  so the figures measure the edge (read, claim, ack, dispatch), not a handler.
- `soak`: records every handled event durably, then replies once into the
  event's own channel with the event id in the text.

The soak record is an append-only file (BUIDL_SOAK_RECORD), one line per
handler run: `event_id envelope_id pid retry_attempt unix_time`. Each line is
one os.write on an O_APPEND descriptor, so lines from several processes never
interleave, and once write() returns the line survives the death of the
process (it is in the kernel's page cache): the soak kills processes, not the
machine, so no fsync is needed, and leaving it out keeps the time between the
handler's effect and its return as short as a real handler's would be. Every
run is recorded, not just the first, so a handler that runs twice for one
event shows as two lines: that is what the soak counts as "handled twice".
"""
from __future__ import annotations

import os
import time
from typing import Any

from buidl_edge.app import Context, EdgeApp

bench = EdgeApp("bench-noop")


@bench.event("message")
def bench_noop(event: dict[str, Any], ctx: Context) -> None:
    return None


soak = EdgeApp("soak")
_record_fd: int | None = None


def _record(line: bytes) -> None:
    global _record_fd
    if _record_fd is None:
        _record_fd = os.open(os.environ["BUIDL_SOAK_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_record_fd, line)


@soak.event("message")
def soak_record_and_reply(event: dict[str, Any], ctx: Context) -> None:
    if event.get("bot_id"):
        return
    envelope = ctx.envelope
    event_id = envelope.event_id or "-"
    _record(f"{event_id} {envelope.envelope_id} {os.getpid()} {envelope.retry_attempt} {time.time():.6f}\n".encode())
    ctx.say(f"soak reply for {event_id}")
