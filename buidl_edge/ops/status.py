"""What `buidl-edge status` shows: supervisord's view joined with each worker's heartbeat.

A row is only as alive as the evidence: a worker whose pid is gone on this host is DEAD, one
whose last heartbeat is older than a few intervals is STALE, and neither shows uptime,
connections or counters it no longer has. Values are numbers or None (JSON null); the table
turns them into text.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from buidl_edge.config import Settings
from buidl_edge.ops.supervise import ProcessInfo, SupervisorDown, supervisor_processes
from buidl_edge.store.base import AdminStore, EdgeStore, OutboxStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.owners import STALE_AFTER_S, alive_here, dead_here, holder_owner

# A dead or stale worker stays listed this long after its last heartbeat, then drops out.
SHOWN_FOR_S = 60.0

Stats = dict[str, Any]


def _connections(stats: Stats) -> list[dict[str, Any]]:
    return stats.get("connections") or []


def _last_ack_ms(stats: Stats) -> float | None:
    latencies = [c["last_ack_latency_ms"] for c in _connections(stats) if c.get("last_ack_latency_ms") is not None]
    return min(latencies) if latencies else None


def _section_field(section: str, key: str) -> Callable[[Stats], Any]:
    """A figure of one part of the worker (relay, streams); None for a worker without that part."""
    return lambda s: (s[section] or {}).get(key) if section in s else None


# ctx.stream's figures: row key -> the stream sender's stats key.
STREAM_FIELDS = {"streams_open": "open", "streams_started": "started", "stream_appends": "appends_sent",
                 "stream_coalesced": "appends_coalesced", "stream_429s": "rate_limited",
                 "stream_rollovers": "rollovers"}


# What each column reads from a heartbeat's stats; a row without a live heartbeat has None in all.
# A new column is one entry here (and one in TABLE_COLUMNS to show it in the table).
HEARTBEAT_FIELDS: dict[str, Callable[[Stats], Any]] = {
    "connections_open": lambda s: sum(1 for c in _connections(s) if c.get("connected")),
    "connections": lambda s: len(_connections(s)),
    "acked": lambda s: sum(c.get("envelopes_acked", 0) for c in _connections(s)),
    "duplicates": lambda s: (s.get("dispatch") or {}).get("duplicates", 0),
    "handler_errors": lambda s: (s.get("dispatch") or {}).get("handler_errors", 0),
    # Handlers running now, and the backlog behind them.
    "running": lambda s: (s.get("dispatch") or {}).get("handlers_running", 0),
    "queued": lambda s: (s.get("dispatch") or {}).get("handlers_queued", 0),
    "store_rejected": lambda s: (s.get("dispatch") or {}).get("store_rejected", 0),
    "reconnects": lambda s: sum(c.get("reconnect_count", 0) for c in _connections(s)),
    "last_ack_ms": _last_ack_ms,
    "sent": lambda s: (s.get("outbox") or {}).get("sent", 0),
    "429s": lambda s: (s.get("outbox") or {}).get("rate_limited", 0),
    "post_failed": lambda s: (s.get("outbox") or {}).get("failed", 0),
    "degraded": lambda s: bool(s.get("degraded")),
    "slot_wait": lambda s: len((s.get("slots") or {}).get("waiting") or {}),
    # Relay mode's deliveries to the app behind it; None for a worker that runs an EdgeApp.
    **{f"relay_{key}": _section_field("relay", key)
       for key in ("sent", "retried", "failed", "latency_p50_ms", "latency_p99_ms")},
    # Streamed answers (ctx.stream); None for a worker that predates them, or relays.
    **{column: _section_field("streams", key) for column, key in STREAM_FIELDS.items()},
}


def worker_row(name: str, state: str, pid: int | None, uptime_s: float | None, stats: Stats | None,
               heartbeat_age_s: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"process": name, "state": state, "pid": pid or None,
                           "uptime_s": None if uptime_s is None else round(uptime_s, 1),
                           "heartbeat_age_s": None if heartbeat_age_s is None else round(heartbeat_age_s, 1)}
    for column, read in HEARTBEAT_FIELDS.items():
        row[column] = read(stats) if stats is not None else None
    return row


# The table: header -> how a cell is made from a row.
def _uptime(row: dict[str, Any]) -> Any:
    return None if row["uptime_s"] is None else f"{row['uptime_s']:.0f}s"


def _links(row: dict[str, Any]) -> Any:
    return None if row["connections"] is None else f"{row['connections_open']}/{row['connections']}"


def _cell(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row[key]


TABLE_COLUMNS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "process": lambda r: r["process"], "state": lambda r: r["state"], "pid": lambda r: r["pid"],
    "uptime": _uptime, "connections": _links,
    **{name: _cell(name) for name in ("acked", "duplicates", "handler_errors", "running", "queued", "reconnects",
                                      "last_ack_ms", "sent", "429s", "post_failed", "degraded", "slot_wait")},
}


# Shown when some worker relays: header -> row key.
RELAY_COLUMNS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "relayed": lambda r: r["relay_sent"], "relay_retried": lambda r: r["relay_retried"],
    "relay_failed": lambda r: r["relay_failed"], "app_p50_ms": lambda r: r["relay_latency_p50_ms"],
    "app_p99_ms": lambda r: r["relay_latency_p99_ms"],
}


# Shown when some worker has streamed an answer: header -> row key.
STREAM_COLUMNS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "streams_open": _cell("streams_open"), "streamed": _cell("streams_started"), "appends": _cell("stream_appends"),
    "coalesced": _cell("stream_coalesced"), "stream_429s": _cell("stream_429s"),
    "rollovers": _cell("stream_rollovers"),
}


def table_columns(rows: list[dict[str, Any]]) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """TABLE_COLUMNS, the relay's when any worker relays, the streams' when any worker streamed."""
    columns = {**TABLE_COLUMNS, **RELAY_COLUMNS} if any_relaying(rows) else dict(TABLE_COLUMNS)
    if any(row.get("streams_started") or row.get("streams_open") for row in rows):
        columns.update(STREAM_COLUMNS)
    return columns


def any_relaying(rows: list[dict[str, Any]]) -> bool:
    return any(row.get("relay_sent") is not None for row in rows)


def _supervised_row(process: ProcessInfo, beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
    if process.state != "RUNNING":
        return worker_row(process.name, process.state, process.pid, None, None)
    age = None if beat is None else now - beat["updated_at"]
    if age is not None and age > STALE_AFTER_S:  # alive per supervisord, silent in the store
        return worker_row(process.name, "STALE", process.pid, process.uptime_s, None, age)
    return worker_row(process.name, "RUNNING", process.pid, process.uptime_s,
                      beat["stats"] if beat else None, age)


def _heartbeat_row(beat: dict[str, Any], here: str, supervised: bool, now: float) -> dict[str, Any]:
    host, pid, stats = beat.get("host") or here, beat["pid"], beat.get("stats") or {}
    local = host == here
    name = (stats.get("process") or f"pid {pid}") + ("" if local else f"@{host}")
    age = now - beat["updated_at"]
    if local and not alive_here(pid):
        return worker_row(name, "DEAD", pid, None, None, age)
    where = "elsewhere" if supervised or not local else "unsupervised"
    if age > STALE_AFTER_S:
        return worker_row(name, f"STALE ({where})", pid, None, None, age)
    return worker_row(name, f"RUNNING ({where})", pid, now - stats.get("started_at", now), stats, age)


def collect_status(settings: Settings, store: EdgeStore) -> dict[str, Any]:
    now = time.time()
    here = socket.gethostname()
    try:
        beats = store.workers(max_age_s=SHOWN_FOR_S)
    except StoreError:
        beats = []
    # A shared (Redis) store holds the heartbeats of every dyno: pids only identify a worker per host.
    local = {w["pid"]: w for w in beats if (w.get("host") or here) == here}
    try:
        processes = supervisor_processes(settings.state_dir)
        supervisor = "running"
    except SupervisorDown as exc:
        processes = []
        supervisor = f"stopped ({exc})"
    rows = [_supervised_row(p, local.get(p.pid), now) for p in processes]
    ours = {(here, p.pid) for p in processes if p.pid}
    for beat in beats:
        key = ((beat.get("host") or here), beat["pid"])
        if key in ours:
            continue
        if processes and key[0] == here and not alive_here(beat["pid"]):
            continue  # supervisord speaks for this host's workers; this one was replaced
        rows.append(_heartbeat_row(beat, here, bool(processes), now))
    relaying = any_relaying(rows)
    return {"supervisor": supervisor, "processes": rows, "outbox": outbox_summary(store),
            "slots": slot_summary(settings, store), "relay": relay_summary(store) if relaying else None}


def live_workers(store: AdminStore) -> list[dict[str, Any]]:
    """Workers heartbeating on this store now (a dead pid on this host does not count)."""
    here = socket.gethostname()
    try:
        beats = store.workers(max_age_s=STALE_AFTER_S)
    except StoreError:
        return []
    return [w for w in beats if not dead_here(w.get("owner", ""), here)]


def slot_summary(settings: Settings, store: AdminStore) -> dict[str, Any] | None:
    """The app's connection slots held right now, over every process sharing the store; a slot
    whose holder's pid is gone on this host is free, whatever its lease says."""
    here = socket.gethostname()
    try:
        held = [h for h in store.slots() if not dead_here(holder_owner(h["holder"]), here)]
    except StoreError:
        return None
    return {"limit": settings.max_app_connections, "held": len(held), "holders": [h["holder"] for h in held]}


def relay_summary(store: AdminStore) -> dict[str, Any] | None:
    """Relay mode's backlog in the shared inbox: rows waiting for delivery, in flight, failed."""
    try:
        stats = store.inbox_stats()
    except StoreError:
        return None
    return {"pending": stats.get("pending", 0), "processing": stats.get("processing", 0),
            "failed": stats.get("failed", 0), "oldest_pending_age_s": stats.get("oldest_pending_age_s")}


def outbox_summary(store: OutboxStore) -> dict[str, Any] | None:
    """The shared outbox: depth (pending + sending), sent (within retention), failed, 429s seen."""
    try:
        stats = store.outbox_stats()
    except StoreError:
        return None
    return {key: stats.get(key) for key in ("depth", "pending", "sending", "sent", "failed", "rate_limited",
                                            "oldest_unsent_age_s")}
