"""What `buidl-edge status` shows: supervisord's view joined with each worker's heartbeat."""
from __future__ import annotations

import socket
import time
from typing import Any

from buidl_edge.config import Settings
from buidl_edge.store.errors import StoreError
from buidl_edge.store.owners import is_dead_local
from buidl_edge.supervise import SupervisorDown, supervisor_processes

# A heartbeat older than this belongs to a process that is gone.
STALE_HEARTBEAT_S = 15.0


def worker_row(name: str, state: str, pid: int, uptime_s: float, stats: dict[str, Any] | None) -> dict[str, Any]:
    stats = stats or {}
    connections = stats.get("connections", [])
    dispatch = stats.get("dispatch", {})
    outbox = stats.get("outbox", {})
    latencies = [c["last_ack_latency_ms"] for c in connections if c.get("last_ack_latency_ms") is not None]
    return {
        "process": name,
        "state": state,
        "pid": pid,
        "uptime": f"{uptime_s:.0f}s",
        "connections": f"{sum(1 for c in connections if c.get('connected'))}/{len(connections)}",
        "acked": sum(c.get("envelopes_acked", 0) for c in connections),
        "duplicates": dispatch.get("duplicates", 0),
        "handler_errors": dispatch.get("handler_errors", 0),
        "running": dispatch.get("handlers_running", 0),  # handlers now, and the backlog behind them
        "queued": dispatch.get("handlers_queued", 0),
        "reconnects": sum(c.get("reconnect_count", 0) for c in connections),
        "last_ack_ms": min(latencies) if latencies else "",
        "sent": outbox.get("sent", 0),
        "429s": outbox.get("rate_limited", 0),
        "post_failed": outbox.get("failed", 0),
        "degraded": bool(stats.get("degraded")),
        "slot_wait": len((stats.get("slots") or {}).get("waiting") or {}),
    }


def collect_status(settings: Settings, store: Any) -> dict[str, Any]:
    try:
        beats = store.workers(max_age_s=STALE_HEARTBEAT_S)
    except StoreError:
        beats = []
    # A shared (Redis) store holds the heartbeats of every dyno: pids only identify a worker per host.
    here = socket.gethostname()
    heartbeats = {w["pid"]: w for w in beats if w.get("host", here) == here}
    try:
        processes = supervisor_processes(settings.state_dir)
        supervisor = "running"
    except SupervisorDown as exc:
        processes = []
        supervisor = f"stopped ({exc})"
    rows = [worker_row(p.name, p.state, p.pid, p.uptime_s, heartbeats.get(p.pid, {}).get("stats"))
            for p in processes]
    if not processes:  # workers started by hand, outside supervisord
        now = time.time()
        rows = [worker_row(w["stats"].get("process") or f"pid {w['pid']}", "RUNNING (unsupervised)", w["pid"],
                           now - w["stats"].get("started_at", now), w["stats"]) for w in heartbeats.values()]
    # Workers of other dynos (or other stacks on this host) sharing the store.
    ours = {(here, p.pid) for p in processes} | {(here, pid) for pid in heartbeats if not processes}
    now = time.time()
    for w in beats:
        if (w.get("host", here), w["pid"]) in ours or is_dead_local(w.get("owner", ""), here):
            continue  # shown above, or the last beat of a process that is gone
        name = w["stats"].get("process") or f"pid {w['pid']}"
        rows.append(worker_row(f"{name}@{w.get('host', here)}", "RUNNING (elsewhere)", w["pid"],
                               now - w["stats"].get("started_at", now), w["stats"]))
    return {"supervisor": supervisor, "processes": rows, "outbox": outbox_summary(store),
            "slots": slot_summary(settings, store)}


def slot_summary(settings: Settings, store: Any) -> dict[str, Any] | None:
    """The app's connection slots held right now, over every process sharing the store."""
    try:
        held = store.slots()
    except (StoreError, AttributeError):
        return None
    return {"limit": settings.max_app_connections, "held": len(held), "holders": [h["holder"] for h in held]}


def outbox_summary(store: Any) -> dict[str, Any] | None:
    """The shared outbox: depth (pending + sending), sent (within retention), failed, 429s seen."""
    try:
        stats = store.outbox_stats()
    except (StoreError, AttributeError):
        return None
    return {key: stats.get(key) for key in ("depth", "pending", "sending", "sent", "failed", "rate_limited",
                                            "oldest_unsent_age_s")}
