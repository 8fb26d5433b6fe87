"""The `/_sim/` control API: inject events, apply faults, read what happened."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import events
from .access import ACCEPTED
from .events import RESPOND_PATH
from .http import Request, Response
from .hub import DISCONNECT_REASONS, FAULT_KINDS, FaultError, Hub
from .knobs import Knobs
from .load import LoadError
from .sentry import SentryIngest
from .webapi import WebApi

MAX_INJECT = 100_000


class Control:
    def __init__(self, knobs: Knobs, counters: Counter[str], hub: Hub, webapi: WebApi,
                 sentry: SentryIngest | None = None) -> None:
        self.knobs = knobs
        self.counters = counters
        self.hub = hub
        self.webapi = webapi
        self.sentry = sentry or SentryIngest()
        # (method, name) -> (handler, what it does): `GET /_sim/` lists them from here.
        self.routes: dict[tuple[str, str], tuple[Callable[[Request], Response], str]] = {
            ("GET", ""): (self.index, "this list"),
            ("GET", "health"): (lambda r: Response(200, {"ok": True}), "ok while the simulator answers"),
            ("POST", "events"): (self.inject, "inject events: kind (" + ", ".join(events.KINDS) + "), "
                                 "text, channel, user, ts, thread_ts, command (slash_command), action_id and "
                                 "message_ts (block_action), callback_id (shortcut, view_submission), values "
                                 "(view_submission), action_id (block_suggestion), retry_attempt and retry_reason, "
                                 "subtype, count; answers each event's key"),
            ("GET", "event"): (self.event, "one injected event by ?key=, with the payload Slack sends for it"),
            ("POST", "fault"): (self.fault, "a fault on a link: kind (" + ", ".join(FAULT_KINDS) + "); "
                                "reason for disconnect (" + ", ".join(DISCONNECT_REASONS) + "), seconds for "
                                "silence and blackhole, key for redeliver; target oldest (default), newest, "
                                "all or a link id"),
            ("GET", "state"): (lambda r: Response(200, self.state()),
                               ("links, events, acks, and what the bot did: messages, responses, reactions, "
                                "views, streams, assistant statuses and prompts")),
            ("GET", "summary"): (lambda r: Response(200, self.summary()), "counters and ack latencies"),
            ("POST", "config"): (self.configure, "set knobs: " + ", ".join(self.knobs.to_dict())),
            ("POST", "reset"): (self.reset, "forget events, acks and what the bot did; links stay open"),
            ("POST", "load"): (self.load, "start a load run: mode window, rate, finish or stop"),
            ("GET", "load"): (lambda r: Response(200, self.hub.load.status(bool(r.params.get("keys")),
                                                                          bool(r.params.get("brief")))),
                              "the current load run"),
            ("GET", "sentry"): (lambda r: Response(200, self.sentry.listing(
                str(r.params.get("raw", "")).lower() in ("1", "true", "yes"))),
                "Sentry events received (?raw=1 adds each envelope)"),
        }

    def handle(self, name: str, req: Request) -> Response:
        if req.body_error:
            return _bad(req.body_error)
        route = self.routes.get((req.method, name))
        if route is None:
            return Response(404, {"ok": False,
                                  "error": f"no route {req.method} /_sim/{name}; GET /_sim/ lists them"})
        return route[0](req)

    def index(self, req: Request) -> Response:
        """Every route of this simulator, for a user who has not read its source."""
        routes = [{"method": method, "path": f"/_sim/{name}", "does": does}
                  for (method, name), (_, does) in self.routes.items()]
        return Response(200, {
            "ok": True,
            "routes": routes,
            "web_api": {"path": "/api/<method>", "methods": sorted(self.webapi.methods),
                        "tokens": ACCEPTED},
            "socket_mode": {"path": "/link/", "does": "the wss:// URL apps.connections.open hands out"},
            "response_urls": {"path": f"{RESPOND_PATH}<id>", "does": "recorded; see GET /_sim/state"},
            "sentry": {"path": "/api/<project>/envelope/", "does": "Sentry ingestion; see GET /_sim/sentry"},
        })

    def inject(self, req: Request) -> Response:
        params = dict(req.params)
        kind = str(params.pop("kind", "message"))
        if kind not in events.KINDS:
            return _bad(f"unknown kind: {kind}")
        count = params.pop("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_INJECT:
            try:
                count = int(count)
            except (TypeError, ValueError):
                return _bad("count must be an integer")
            if not 1 <= count <= MAX_INJECT:
                return _bad(f"count must be 1..{MAX_INJECT}")
        try:
            return Response(200, {"ok": True, "events": self.hub.inject(kind, params, count)})
        except ValueError as exc:
            return _bad(str(exc))

    def event(self, req: Request) -> Response:
        """One injected event with the payload Slack sends for it (its trigger_id, response_url …)."""
        tracked = self.hub.tracker.events.get(str(req.params.get("key") or ""))
        if tracked is None:
            return Response(404, {"ok": False, "error": "unknown key"})
        return Response(200, {"ok": True, "event": {**tracked.to_dict(), "payload": tracked.spec.payload}})

    def fault(self, req: Request) -> Response:
        params = dict(req.params)
        kind = str(params.pop("kind", ""))
        target = params.pop("target", None)
        try:
            touched = self.hub.fault(kind, str(target) if target else None, params)
        except FaultError as exc:
            return _bad(str(exc))
        return Response(200, {"ok": True, "kind": kind, "connections": touched})

    def configure(self, req: Request) -> Response:
        try:
            self.knobs.update(req.params)
        except ValueError as exc:
            return _bad(str(exc))
        return Response(200, {"ok": True, "knobs": self.knobs.to_dict()})

    def load(self, req: Request) -> Response:
        try:
            return Response(200, self.hub.load.start(dict(req.params)))
        except LoadError as exc:
            return _bad(str(exc))

    def reset(self, req: Request) -> Response:
        self.hub.reset()
        self.webapi.reset()
        self.sentry.reset()
        return Response(200, {"ok": True})

    def summary(self) -> dict[str, Any]:
        c = self.counters
        now = time.monotonic()
        return {
            "ok": True,
            "events_injected": c["events_injected"],
            "envelopes_sent": c["envelopes_sent"],
            "acked": c["acked"],
            "acks_total": c["acks_total"],
            "late_acks": c["late_acks"],
            "redeliveries": c["redeliveries"],
            "missed_deadlines": c["missed_deadlines"],
            "events_missed": c["events_missed"],
            "unknown_acks": c["unknown_acks"],
            "duplicate_acks": c["duplicate_acks"],
            "bad_frames": c["bad_frames"],
            "too_many_websockets": c["too_many_websockets"],
            "pending": len(self.hub.pending),
            "unacked_in_flight": self.hub.tracker.outstanding(),
            "open_connections": len(self.hub.open),
            "max_open_connections_seen": self.hub.max_open_seen,
            "connections_opened": c["connections_opened"],
            "connections_open_calls": c["connections_open_calls"],
            "open_429s": c["open_429s"],
            "post_429s": c["post_429s"],
            "post_errors": c["post_errors"],
            "messages_posted": c["messages_posted"],
            "messages_updated": c["messages_updated"],
            "messages_deleted": c["messages_deleted"],
            "reactions_added": c["reactions_added"],
            "streams_started": c["streams_started"],
            "stream_appends": c["stream_appends"],
            "streams_stopped": c["streams_stopped"],
            "streams_expired": c["streams_expired"],
            "stream_429s": c["stream_429s"],
            "stream_calls_not_streaming": c["stream_calls_not_streaming"],
            "views_opened": c["views_opened"],
            "responses_posted": c["responses_posted"],
            "respond_500s": c["respond_500s"],
            "respond_expired": c["respond_expired"],
            "method_calls": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("calls:")},
            "method_429s": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("429s:")},
            "sentry_events": self.sentry.events_total,
            "faults": {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("fault:")},
            "ack_latency_ms": self.hub.tracker.latency_summary(),
            "longest_no_connection_gap_s": self.hub.no_connection_gap_s(now),
        }

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        tracker = self.hub.tracker
        return {
            "ok": True,
            "connections": [link.to_dict(now) for link in self.hub.links.values()],
            "events": {key: ev.to_dict() for key, ev in tracker.events.items()},
            "acks": list(tracker.acks),
            "messages": list(self.webapi.messages),
            "responses": self.webapi.responses.to_dict(),
            **self.webapi.workspace.to_dict(),
            "streams": self.webapi.streams.to_list(),
            "pending": [key for key, _, _ in self.hub.pending],
            "knobs": self.knobs.to_dict(),
        }


def _bad(error: str) -> Response:
    return Response(400, {"ok": False, "error": error})
