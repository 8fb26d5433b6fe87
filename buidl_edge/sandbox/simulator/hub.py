"""The Socket Mode side of the fake Slack: open links, routing, delivery, faults.

Everything runs in one gevent thread, so state changes between two yields
are atomic; sends only enqueue on a link (see link.py) and never yield.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import gevent

from buidl_edge.socketmode.protocol import Envelope, ProtocolError, build_disconnect, build_hello, parse_ack

from . import events
from .knobs import Knobs
from .link import Link, attach
from .load import LoadGenerator
from .tracking import Delivery, TrackedEvent, Tracker

SWEEP_INTERVAL_S = 0.05
DISCONNECT_REASONS = ("warning", "refresh_requested", "link_disabled", "too_many_websockets")
FAULT_KINDS = ("disconnect", "drop", "silence", "blackhole", "bad_frame", "redeliver")


class FaultError(ValueError):
    pass


class Hub:
    def __init__(self, knobs: Knobs, counters: Counter[str]) -> None:
        self.knobs = knobs
        self.counters = counters
        self.tracker = Tracker(counters)
        self.ts = events.TsClock()
        self.links: dict[str, Link] = {}  # every link since the last reset, oldest first
        self.open: dict[str, Link] = {}
        self.pending: deque[tuple[str, int, str]] = deque()  # (key, attempt, retry_reason)
        self.max_open_seen = 0
        self.longest_gap_s = 0.0
        self._gap_started: float | None = None
        self._link_seq = 0
        self._rr = 0
        # Called with (delivery, now) for each new ack while a load run is on (load.py).
        self.ack_observer: Callable[[Delivery, float], None] | None = None
        # Called with each injected event's spec: the Web API side learns its messages,
        # trigger ids and response_urls (app.py wires it).
        self.inject_observer: Callable[[events.Spec], None] | None = None
        # Where this simulator serves, for the response_urls it hands out (server.py sets it).
        self.base_url: str | None = None
        self.load = LoadGenerator(self)

    # -- links -------------------------------------------------------------

    def admit(self, ws: Any) -> Link:
        """Register a new link and greet it, or (state "closing") tell it why not."""
        self._link_seq += 1
        link = attach(ws, f"c{self._link_seq}")
        if len(self.open) >= self.knobs.max_connections:
            self.counters["too_many_websockets"] += 1
            link.put("text", build_disconnect("too_many_websockets"))
            link.put("close")
            link.state = "closing"
            return link
        now = time.monotonic()
        self.links[link.id] = link
        self.open[link.id] = link
        self.counters["connections_opened"] += 1
        self.max_open_seen = max(self.max_open_seen, len(self.open))
        if self._gap_started is not None:
            self.longest_gap_s = max(self.longest_gap_s, now - self._gap_started)
            self._gap_started = None
        link.put("text", build_hello(len(self.open), events.APP_ID, self.knobs.connection_time, "sim"))
        link.hello_sent = True
        self.flush_pending()
        return link

    def closed(self, link: Link) -> None:
        """The link's socket is gone; its unacked envelopes wait for their deadline."""
        link.state = "closed"
        link.closed_at = time.time()
        link.outbox.put(None)
        if self.open.pop(link.id, None) is not None and not self.open:
            self._gap_started = time.monotonic()

    def record_frame(self, link: Link, text: str | bytes) -> None:
        now = time.monotonic()
        link.last_client_activity = now
        try:
            envelope_id, payload = parse_ack(text)
        except ProtocolError:
            self.counters["bad_frames"] += 1
            return
        delivery = self.tracker.record_ack(envelope_id, payload, link.id, now)
        if delivery is not None:
            link.acks += 1
            if self.ack_observer is not None:
                self.ack_observer(delivery, now)

    # -- delivery ----------------------------------------------------------

    def inject(self, kind: str, fields: dict[str, Any], count: int) -> list[dict[str, str]]:
        """`envelope_id` and `event_id` in `fields` override the first event's ids only (ids are
        unique), so a test can send a hostile id, e.g. a lone surrogate, among good ones.
        Raises ValueError for fields no event can have (an unknown subtype)."""
        out = []
        for i in range(count):
            if i == 1:
                fields = {k: v for k, v in fields.items() if k not in events.ID_OVERRIDES}
            spec = events.build(kind, fields, str(fields.get("ts") or self.ts.next()), self.base_url)
            if self.inject_observer is not None:
                self.inject_observer(spec)
            first_id = str(fields.get("envelope_id") or uuid.uuid4())
            key = spec.event_id or first_id
            event = TrackedEvent(key=key, kind=kind, spec=spec, first_envelope_id=first_id)
            self.tracker.add(event)
            # A first delivery may say it is a retry (`retry_attempt`), as one does when Slack's
            # earlier attempts went to a connection that is gone.
            self.deliver(event, _int_field(fields, "retry_attempt"), str(fields.get("retry_reason") or ""))
            out.append({"key": key, "envelope_id": first_id})
        return out

    def deliver(self, event: TrackedEvent, attempt: int, reason: str, link: Link | None = None) -> bool:
        """Send one envelope for `event`, or queue it until a link is there."""
        if link is None:
            link = self._pick()
        if link is None:
            self.pending.append((event.key, attempt, reason))
            return False
        envelope_id = event.first_envelope_id if not event.envelope_ids else str(uuid.uuid4())
        spec = event.spec
        frame = Envelope(spec.envelope_type, envelope_id, spec.payload,
                         spec.accepts_response_payload, attempt, reason).to_dict()
        self.tracker.record_send(event, envelope_id, link.id, attempt, time.monotonic(), self.knobs.ack_deadline)
        link.envelopes_sent += 1
        link.put("text", json.dumps(frame))
        return True

    def _pick(self) -> Link | None:
        """Round-robin over greeted links, preferring ones not told to go away."""
        now = time.monotonic()
        usable = [link for link in self.open.values()
                  if link.state == "open" and link.hello_sent and not link.silenced(now)]
        if not usable:
            usable = [link for link in self.open.values() if link.state == "warned" and not link.silenced(now)]
        if not usable:
            return None
        self._rr += 1
        return usable[self._rr % len(usable)]

    def flush_pending(self) -> None:
        while self.pending:
            link = self._pick()
            if link is None:
                return
            key, attempt, reason = self.pending.popleft()
            event = self.tracker.events.get(key)
            if event is not None:
                self.deliver(event, attempt, reason, link)

    def sweep_forever(self) -> None:
        """Deadlines, retries, pending envelopes and server pings, on one timer."""
        while True:
            gevent.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep(time.monotonic())
            except Exception as exc:  # keep the timer alive; a bug here must not stop delivery
                print(f"simulator sweep error: {exc!r}", flush=True)

    def sweep(self, now: float) -> None:
        knobs = self.knobs
        self.tracker.expire(now, knobs.max_retries, knobs.retry_delays)
        for event, attempt in self.tracker.due_retries(now):
            self.counters["redeliveries"] += 1
            self.deliver(event, attempt, "timeout")
        self.flush_pending()
        for link in list(self.open.values()):
            if now - link.last_ping >= knobs.ping_interval and not link.silenced(now):
                link.last_ping = now
                link.put("ping", b"sim")

    # -- faults ------------------------------------------------------------

    def fault(self, kind: str, target: str | None, fields: dict[str, Any]) -> list[str]:
        """Apply a fault; returns the ids of the links it touched."""
        if kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault: {kind}")
        if kind == "redeliver":
            return self._redeliver(str(fields.get("key") or ""), target)
        links = self._targets(target or "oldest")
        if not links:
            raise FaultError("no_target")
        if kind == "disconnect":
            reason = fields.get("reason")
            if reason not in DISCONNECT_REASONS:
                raise FaultError(f"bad reason: {reason!r}")
            self.counters[f"fault:disconnect:{reason}"] += 1
        if kind == "blackhole":
            seconds = fields.get("seconds")
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                        or seconds < 0):
                raise FaultError(f"bad seconds: {seconds!r}")
        if kind == "bad_frame" and fields.get("opcode") is not None:
            opcode = fields["opcode"]
            if isinstance(opcode, bool) or not isinstance(opcode, int) or not 0 <= opcode <= 15:
                raise FaultError(f"bad opcode: {opcode!r}")
        self.counters[f"fault:{kind}"] += 1
        for link in links:
            self._apply(kind, link, fields)
        return [link.id for link in links]

    def _apply(self, kind: str, link: Link, fields: dict[str, Any]) -> None:
        if kind == "disconnect":
            reason = fields["reason"]
            link.put("text", build_disconnect(reason))
            if reason in ("warning", "refresh_requested"):
                link.state = "warned"  # new envelopes go elsewhere when possible
                delay = self.knobs.warning_close_delay if reason == "warning" else self.knobs.refresh_close_delay
                gevent.spawn_later(delay, link.put, "close")
            else:
                link.state = "closing"
                link.put("close")
        elif kind == "drop":
            link.drop()
        elif kind == "silence":
            seconds = float(fields.get("seconds") or 5.0)
            link.silenced_until = time.monotonic() + seconds
            gevent.spawn_later(seconds + 0.01, self.flush_pending)
        elif kind == "blackhole":
            # Half-open for good (or for `seconds`, then dropped). Slack does not know: the link
            # stays open here and still gets envelopes, which go unacked and are redelivered.
            hole_s = fields.get("seconds")
            link.blackhole(None if hole_s is None else float(hole_s))
        elif kind == "bad_frame":
            text = str(fields.get("text", "not json {"))
            if fields.get("opcode") is None:
                link.put("text", text)
            else:  # a WebSocket frame of any opcode, e.g. a reserved one no client may accept
                link.put("frame", (fields["opcode"], text.encode()))

    def _redeliver(self, key: str, target: str | None) -> list[str]:
        """Send an event again as Slack does when an ack got lost: new envelope, retry +1."""
        event = self.tracker.events.get(key)
        if event is None:
            raise FaultError(f"unknown key: {key!r}")
        link = None
        if target:
            found = self._targets(target)
            if not found:
                raise FaultError("no_target")
            link = found[0]
        attempt = self.tracker.deliveries[event.envelope_ids[-1]].attempt + 1 if event.envelope_ids else 1
        self.counters["fault:redeliver"] += 1
        self.counters["redeliveries"] += 1
        self.deliver(event, attempt, "timeout", link)
        return [link.id] if link else []

    def _targets(self, target: str) -> list[Link]:
        links = [link for link in self.open.values() if link.state != "closing"]
        if target == "all":
            return links
        if target == "oldest":
            return links[:1]
        if target == "oldest_open":  # not already told to go away
            return [link for link in links if link.state == "open"][:1]
        if target == "newest":
            return links[-1:]
        return [link for link in links if link.id == target]

    # -- reporting ---------------------------------------------------------

    def no_connection_gap_s(self, now: float) -> float:
        current = now - self._gap_started if self._gap_started is not None else 0.0
        return round(max(self.longest_gap_s, current), 3)

    def reset(self) -> None:
        for link in self.open.values():  # a reset ends the faults it can
            link.end_blackhole()
        self.load.stop()
        self.tracker.clear()
        self.pending.clear()
        self.counters.clear()
        self.links = dict(self.open)
        self.max_open_seen = len(self.open)
        self.longest_gap_s = 0.0
        if self._gap_started is not None:
            self._gap_started = time.monotonic()


def _int_field(fields: dict[str, Any], name: str) -> int:
    try:
        return max(0, int(fields.get(name) or 0))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer") from None
