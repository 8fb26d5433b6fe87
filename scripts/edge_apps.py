"""buidl-edge handler apps for scripts/bench.py and scripts/soak.py (BUIDL_APP=edge_apps:…).

The scripts put this folder on PYTHONPATH of the workers they start.

- `bench`: one `message` handler that does nothing, like the peers' listeners,
  so the figures measure the edge (read, claim, ack, dispatch), not a handler.
- `reply`: one `message` handler that replies "ok" (scripts/bench_wal.py: the
  outbox's rows are part of the store's writes).
- `soak`: records every handled event durably, then replies once into the
  event's own channel with the event's key in the text (its event id; a slash
  command's envelope id). Texts starting with a mark change what it does, for
  the soak's fault inputs: `soak-slow S` sleeps S seconds first (a slow AI call,
  to hold the handler pool full; the effect comes at the end, as a real
  handler's would), `soak-echo` puts the text back in the reply (a lone
  surrogate in it goes out as U+FFFD), and `soak-fail` makes a second handler
  raise with the whole text in its exception (a 40,000-character message in a
  traceback, through redaction to the log and Sentry). `/soak` is a slash
  command that records, replies and returns an ack payload.

The soak record is an append-only file (BUIDL_SOAK_RECORD), one JSON line per
handler run: `{"key", "envelope_id", "pid", "retry", "at"}`. JSON escapes a lone
surrogate ("\\udc00"), so an id holding one is recorded exactly, in ASCII. Each
line is one os.write on an O_APPEND descriptor, so lines from several processes never
interleave, and once write() returns the line survives the death of the
process (it is in the kernel's page cache): the soak kills processes, not the
machine, so no fsync is needed, and leaving it out keeps the time between the
handler's effect and its return as short as a real handler's would be. Every
run is recorded, not just the first, so a handler that runs twice for one
event shows as two lines: that is what the soak counts as "handled twice".
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import gevent

from buidl_edge.api.app import Context, EdgeApp

bench = EdgeApp("bench-noop")


@bench.event("message")
def bench_noop(event: dict[str, Any], ctx: Context) -> None:
    return None


# scripts/bench_wal.py: every event also queues a reply, so the outbox writes to the store too.
reply = EdgeApp("bench-reply")


@reply.event("message")
def bench_reply(event: dict[str, Any], ctx: Context) -> None:
    if not event.get("bot_id"):
        ctx.say("ok")


soak = EdgeApp("soak")
_record_fd: int | None = None


def _record(line: bytes) -> None:
    global _record_fd
    if _record_fd is None:
        _record_fd = os.open(os.environ["BUIDL_SOAK_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_record_fd, line)


SLOW_MARK = "soak-slow"
ECHO_MARK = "soak-echo"
FAIL_MARK = "soak-fail"


def _record_run(key: str, ctx: Context) -> None:
    envelope = ctx.envelope
    line = json.dumps({"key": key, "envelope_id": envelope.envelope_id, "pid": os.getpid(),
                       "retry": envelope.retry_attempt, "at": round(time.time(), 6)})
    _record(line.encode() + b"\n")


@soak.event("message")
def soak_record_and_reply(event: dict[str, Any], ctx: Context) -> None:
    if event.get("bot_id"):
        return
    text = event.get("text") or ""
    if text.startswith(SLOW_MARK):
        gevent.sleep(float(text.split()[1]))  # waits like an HTTP call would: the hub goes on acking
    key = ctx.envelope.event_id or "-"
    _record_run(key, ctx)
    ctx.say(f"soak reply for {key}" + (f": {text}" if text.startswith(ECHO_MARK) else ""))


@soak.event("message")
def soak_fail_on_request(event: dict[str, Any], ctx: Context) -> None:
    text = event.get("text") or ""
    if text.startswith(FAIL_MARK):
        raise ValueError(f"soak: failing on purpose, with the whole text: {text}")


@soak.command("/soak")
def soak_command(payload: dict[str, Any], ctx: Context) -> dict[str, Any]:
    key = ctx.envelope.envelope_id  # a command has no event id: Slack never redelivers one
    _record_run(key, ctx)
    ctx.say(f"soak reply for {key}")
    return {"text": "soak command acked"}
