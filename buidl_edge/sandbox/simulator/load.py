"""Load generation inside the simulator, so rates and latencies are measured where Slack would.

Two modes, one run at a time (`POST /_sim/load`, read back with `GET /_sim/load`;
`{"mode": "finish"}` stops injecting and lets the run end once all is acked,
`{"mode": "stop"}` ends it at once):

- `window`: `count` events pushed as fast as acks come back, with at most
  `window` of them sent and not yet acked. The next event goes out from the
  ack handler itself, so the only pacing is the client's.
- `rate`: `rate` events per second for `count` events (or `duration` s),
  injected by one timer greenlet in small batches every TICK_S.

Events are plain `message` events with no mention, so a client's handler has
no Web API work to do. With `channel_prefix` every event gets a channel of its
own (`<prefix>000001`, …), which lets a soak count replies per event.

The hub calls `on_ack` for each acked delivery; a run only looks at its own
events. Latency is per acked delivery, from the frame being queued on the
link to its ack being read (the tracker's clock), so a slow reader shows.
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:  # the hub imports us; we only need its type
    from .hub import Hub
    from .tracking import Delivery

TICK_S = 0.005
MAX_COUNT = 1_000_000
MAX_RATE = 100_000.0
MAX_WINDOW = 100_000
DEFAULT_TIMEOUT_S = 300.0
SAMPLE_KEYS = 20


class LoadError(ValueError):
    pass


class LoadRun:
    def __init__(self, hub: Hub, mode: str, count: int, window: int, rate: float,
                 fields: dict[str, Any], channel_prefix: str | None, timeout_s: float) -> None:
        self.hub = hub
        self.mode = mode
        self.count = count
        self.window = window
        self.rate = rate
        self.fields = fields
        self.channel_prefix = channel_prefix
        self.timeout_s = timeout_s
        self.state = "running"  # running | done | timeout | stopped
        self.keys: list[str] = []
        self._mine: set[str] = set()
        self._acked: set[str] = set()
        self.latencies_ms: list[float] = []
        self.started = time.monotonic()
        self.last_inject: float | None = None
        self.last_ack: float | None = None
        self.ended: float | None = None
        self._timer: gevent.Greenlet | None = None

    # -- injecting ---------------------------------------------------------

    def _inject(self, n: int) -> None:
        hub = self.hub
        for _ in range(n):
            fields = self.fields
            if self.channel_prefix is not None:
                fields = {**fields, "channel": f"{self.channel_prefix}{len(self.keys) + 1:06d}"}
            key = hub.inject("message", fields, 1)[0]["key"]
            self.keys.append(key)
            self._mine.add(key)
        self.last_inject = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()
        if self.mode == "window":
            self._inject(min(self.window, self.count))
            self._timer = gevent.spawn(self._watchdog)
        else:
            self._timer = gevent.spawn(self._pace)

    def _pace(self) -> None:
        """Inject what is due every tick; bursts are at most rate × TICK_S events."""
        while self.state == "running" and len(self.keys) < self.count:
            due = min(self.count, int((time.monotonic() - self.started) * self.rate) + 1)
            if due > len(self.keys):
                self._inject(due - len(self.keys))
            gevent.sleep(TICK_S)
        self._watchdog()

    def _watchdog(self) -> None:
        deadline = self.started + self.timeout_s
        while self.state == "running":
            if time.monotonic() >= deadline:
                self._end("timeout")
                return
            gevent.sleep(0.05)

    # -- acks --------------------------------------------------------------

    def on_ack(self, delivery: Delivery, now: float) -> None:
        key = delivery.key
        if key not in self._mine:
            return
        self.latencies_ms.append((now - delivery.sent_at) * 1000.0)
        if key in self._acked:
            return
        self._acked.add(key)
        self.last_ack = now
        if self.mode == "window" and self.state == "running" and len(self.keys) < self.count:
            self._inject(1)
        if len(self._acked) >= self.count:
            self._end("done")

    def _end(self, state: str) -> None:
        if self.state == "running":
            self.state = state
            self.ended = time.monotonic()

    def finish(self) -> None:
        """Inject nothing more; the run is done once what was sent is acked."""
        self.count = len(self.keys)
        if len(self._acked) >= self.count:
            self._end("done")

    def stop(self) -> None:
        self._end("stopped")
        if self._timer is not None and self._timer is not gevent.getcurrent():
            self._timer.kill(block=False)

    # -- reporting ---------------------------------------------------------

    def status(self, with_keys: bool = False, brief: bool = False) -> dict[str, Any]:
        """`brief` skips the latency percentiles and key samples (cheap enough to poll)."""
        now = time.monotonic()
        acked = len(self._acked)
        end = self.last_ack if self.state == "done" and self.last_ack else (self.ended or now)
        elapsed = max(1e-9, end - self.started)
        inject_span = (self.last_inject or now) - self.started
        out: dict[str, Any] = {
            "ok": True,
            "mode": self.mode,
            "state": self.state,
            "count": self.count,
            "window": self.window if self.mode == "window" else None,
            "rate": self.rate if self.mode == "rate" else None,
            "injected": len(self.keys),
            "acked": acked,
            "outstanding": len(self.keys) - acked,
            "elapsed_s": round(elapsed, 4),
            "acked_per_s": round(acked / elapsed, 1),
            "offered_per_s": round(len(self.keys) / inject_span, 1) if inject_span > 0 else None,
        }
        if brief:
            return out
        out["latency_ms"] = latency_summary(self.latencies_ms)
        if self.keys:
            out["sample_keys"] = random.sample(self.keys, min(SAMPLE_KEYS, len(self.keys)))
        if with_keys:
            out["keys"] = list(self.keys)
        return out


class LoadGenerator:
    """Holds the current run; a new run stops the previous one."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.run: LoadRun | None = None

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = str(params.get("mode") or "")
        if mode in ("stop", "finish"):
            if mode == "finish" and self.run is not None:
                self.run.finish()
            else:
                self.stop()
            return self.status()
        if mode not in ("window", "rate"):
            raise LoadError("mode must be window, rate, finish or stop")
        rate = _number(params, "rate", 0.0, MAX_RATE, required=mode == "rate")
        count = params.get("count")
        if count is None and mode == "rate" and params.get("duration") is not None:
            count = round(_number(params, "duration", 0.001, 86_400.0) * rate)
        count = int(_number({"count": count}, "count", 1, MAX_COUNT, required=True))
        window = int(_number(params, "window", 1, MAX_WINDOW, required=mode == "window") or 1)
        timeout_s = _number(params, "timeout", 0.1, 86_400.0) or DEFAULT_TIMEOUT_S
        prefix = params.get("channel_prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise LoadError("channel_prefix must be a non-empty string")
        fields = {"text": str(params.get("text") or "load"), "channel": str(params.get("channel") or "C0LOAD")}
        self.stop()
        run = LoadRun(self.hub, mode, count, window, rate, fields, prefix, timeout_s)
        self.run = run
        self.hub.ack_observer = run.on_ack
        run.start()
        return run.status()

    def stop(self) -> None:
        if self.run is not None:
            self.run.stop()
        self.hub.ack_observer = None

    def status(self, with_keys: bool = False, brief: bool = False) -> dict[str, Any]:
        if self.run is None:
            return {"ok": True, "state": "idle"}
        return self.run.status(with_keys, brief)


def latency_summary(values_ms: list[float]) -> dict[str, Any]:
    values = sorted(values_ms)
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3)

    return {"count": len(values), "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99),
            "max": round(values[-1], 3)}


def _number(params: dict[str, Any], name: str, low: float, high: float, required: bool = False) -> float:
    value = params.get(name)
    if value is None:
        if required:
            raise LoadError(f"{name} is required")
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LoadError(f"{name} must be a number") from None
    if not low <= value <= high:
        raise LoadError(f"{name} must be {low:g}..{high:g}")
    return float(value)
