"""The Slack Web API methods the edge and handlers use, with Slack's error shapes.

Posting, editing and reading messages live here; reactions, modals and AI assistant threads in
workspace.py; streamed messages in streams.py; response_urls in respond.py. Any method can be
made to answer 429 with the `method_ratelimits` knob.
"""
from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import events
from .http import Request, Response, json_param, slack_error
from .knobs import Knobs
from .ratelimit import TokenBucket
from .respond import ResponseUrls
from .socketmode import Tickets
from .streams import Streams
from .workspace import Workspace

MAX_TEXT_CHARS = 40_000


class WebApi:
    def __init__(self, knobs: Knobs, counters: Counter[str], tickets: Tickets, ts: events.TsClock) -> None:
        self.knobs = knobs
        self.counters = counters
        self.tickets = tickets
        self.ts = ts
        self.messages: list[dict[str, Any]] = []
        self.buckets: dict[str, TokenBucket] = {}
        self.workspace = Workspace(knobs, counters, self.bot_message, _token_refused)
        self.responses = ResponseUrls(knobs, counters, self.bot_message)
        self.streams = Streams(knobs, counters, ts, _token_refused, self.stream_message)
        self.methods: dict[str, Callable[[Request], Response]] = {
            "apps.connections.open": self.connections_open,
            "auth.test": self.auth_test,
            "chat.postMessage": self.post_message,
            "chat.update": self.update_message,
            "chat.delete": self.delete_message,
            "conversations.history": self.history,
            "conversations.replies": self.replies,
            **self.workspace.methods(),
            **self.streams.methods(),
        }

    def handle(self, method: str, req: Request) -> Response:
        handler = self.methods.get(method)
        if handler is None:
            response = slack_error("unknown_method", 404)
            response.body["req_method"] = method[:100]
            return response
        limit = self.knobs.method_ratelimits.get(method)
        if limit and limit["count"] > 0:
            limit["count"] -= 1
            self.counters[f"429s:{method}"] += 1
            return slack_error("ratelimited", 429, [("Retry-After", str(limit["retry_after"]))])
        self.counters[f"calls:{method}"] += 1
        return handler(req)

    def note(self, spec: events.Spec) -> None:
        """An event was injected: learn its message, trigger id and response_url."""
        self.workspace.note(spec)
        self.responses.note(spec)

    def bot_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The bot's own message at (channel, ts), unless deleted."""
        for m in reversed(self.messages):
            if m["ts"] == ts and m["channel"] == channel:
                return None if m.get("deleted") else m
        return None

    def stream_message(self, channel: str, thread_ts: str, ts: str) -> dict[str, Any]:
        """A streamed message starts: it is in the thread at once, its text growing with each append."""
        message = {"channel": channel, "text": "", "blocks": None, "metadata": None, "thread_ts": thread_ts,
                   "ts": ts, "received_at": time.time(), "streamed": True}
        self.messages.append(message)
        self.workspace.message_posted(channel, thread_ts)
        return message

    def connections_open(self, req: Request) -> Response:
        self.counters["connections_open_calls"] += 1
        refused = _token_refused(req, "xapp-")
        if refused:
            return refused
        limit = self.knobs.open_ratelimit
        if limit and limit.get("count", 0) > 0:
            limit["count"] -= 1
            self.counters["open_429s"] += 1
            return slack_error("ratelimited", 429, [("Retry-After", str(limit.get("retry_after", 1)))])
        if self.knobs.open_error:
            return slack_error(self.knobs.open_error)
        ticket = secrets.token_urlsafe(16)
        self.tickets.issue(ticket, self.knobs.ticket_ttl)
        url = f"ws://{req.host}/link/?ticket={ticket}&app_id={events.APP_ID}"
        return Response(200, {"ok": True, "url": url})

    def auth_test(self, req: Request) -> Response:
        token = req.bearer
        if not token:
            return slack_error("not_authed")
        if not token.startswith(("xoxb-", "xapp-")):
            return slack_error("invalid_auth")
        if self.knobs.auth_error:
            return slack_error(self.knobs.auth_error)
        return Response(200, {
            "ok": True, "url": "https://sim.slack.test/", "team": "Sim", "user": "buidl",
            "team_id": events.TEAM_ID, "user_id": events.BOT_USER_ID, "bot_id": events.BOT_ID,
        })

    def post_message(self, req: Request) -> Response:
        refused = _token_refused(req, "xoxb-")
        if refused:
            return refused
        if req.body_error:
            return slack_error("invalid_arguments")
        params = req.params
        channel = str(params.get("channel") or "")
        text = params.get("text") or ""
        blocks = blocks_param(params)
        if isinstance(blocks, Response):
            return blocks
        if not channel:
            return slack_error("channel_not_found")
        if channel in self.knobs.post_errors:
            self.counters["post_errors"] += 1
            return slack_error(self.knobs.post_errors[channel])
        if not text and not blocks:
            return slack_error("no_text")
        wait = self._bucket(channel).take(time.monotonic(), self.knobs.post_rate, self.knobs.post_burst)
        if wait > 0:
            self.counters["post_429s"] += 1
            return slack_error("ratelimited", 429, [("Retry-After", str(max(1, math.ceil(wait))))])
        try:
            metadata = json_param(params.get("metadata"))
        except ValueError:
            return slack_error("invalid_metadata_format")
        if metadata is not None and not (isinstance(metadata, dict) and metadata.get("event_type")):
            return slack_error("invalid_metadata_format")
        ts = self.ts.next()
        thread_ts = params.get("thread_ts") or None
        self.messages.append({"channel": channel, "text": text, "blocks": blocks, "metadata": metadata,
                              "thread_ts": thread_ts, "ts": ts, "received_at": time.time()})
        self.counters["messages_posted"] += 1
        self.workspace.message_posted(channel, thread_ts)
        message: dict[str, Any] = {"type": "message", "text": text, "user": events.BOT_USER_ID,
                                   "bot_id": events.BOT_ID, "ts": ts}
        if blocks:
            message["blocks"] = blocks
        if thread_ts:
            message["thread_ts"] = thread_ts
        return Response(200, {"ok": True, "channel": channel, "ts": ts, "message": message})

    def update_message(self, req: Request) -> Response:
        """chat.update: only the bot's own messages, by channel and ts; text and/or blocks."""
        found = self._own_message(req, "cant_update_message")
        if isinstance(found, Response):
            return found
        params = req.params
        text = params.get("text")
        blocks = blocks_param(params)
        if isinstance(blocks, Response):
            return blocks
        if not text and not blocks:
            return slack_error("no_text")
        if text and len(str(text)) > MAX_TEXT_CHARS:
            return slack_error("msg_too_long")
        if text is not None:
            found["text"] = str(text)
        if blocks is not None:
            found["blocks"] = blocks
        found["edits"] = found.get("edits", 0) + 1
        self.counters["messages_updated"] += 1
        message = {"type": "message", "user": events.BOT_USER_ID, "bot_id": events.BOT_ID,
                   "text": found["text"], "ts": found["ts"], "edited": {"user": events.BOT_USER_ID,
                                                                       "ts": self.ts.next()}}
        return Response(200, {"ok": True, "channel": found["channel"], "ts": found["ts"],
                              "text": found["text"], "message": message})

    def delete_message(self, req: Request) -> Response:
        found = self._own_message(req, "cant_delete_message")
        if isinstance(found, Response):
            return found
        found["deleted"] = True
        self.counters["messages_deleted"] += 1
        return Response(200, {"ok": True, "channel": found["channel"], "ts": found["ts"]})

    def _own_message(self, req: Request, not_ours: str) -> dict[str, Any] | Response:
        """The bot's message named by `channel` and `ts`, or Slack's refusal."""
        refused = _token_refused(req, "xoxb-")
        if refused:
            return refused
        if req.body_error:
            return slack_error("invalid_arguments")
        channel, ts = str(req.params.get("channel") or ""), str(req.params.get("ts") or "")
        if not channel:
            return slack_error("channel_not_found")
        if channel in self.knobs.post_errors:
            return slack_error(self.knobs.post_errors[channel])
        found = self.bot_message(channel, ts)
        if found is not None:
            return found
        return slack_error(not_ours if self.workspace.is_person_message(channel, ts) else "message_not_found")

    def history(self, req: Request) -> Response:
        """The channel's top-level messages after `oldest`, newest first, paged by `cursor`."""
        return self._read(req, lambda m: m["thread_ts"] in (None, m["ts"]), newest_first=True)

    def replies(self, req: Request) -> Response:
        """The thread `ts`: its parent and replies after `oldest`, oldest first."""
        thread = str(req.params.get("ts") or "")
        if not thread:
            return slack_error("invalid_arguments")
        return self._read(req, lambda m: thread in (m["ts"], m["thread_ts"]), newest_first=False)

    def _read(self, req: Request, wanted: Callable[[dict[str, Any]], bool], newest_first: bool) -> Response:
        refused = _token_refused(req, "xoxb-")
        if refused:
            return refused
        if self.knobs.history_error:
            return slack_error(self.knobs.history_error)
        params = req.params
        channel = str(params.get("channel") or "")
        if not channel:
            return slack_error("channel_not_found")
        if channel in self.knobs.post_errors:
            return slack_error(self.knobs.post_errors[channel])
        try:
            oldest = float(params.get("oldest") or 0)
            limit = max(1, min(1000, int(params.get("limit") or 100)))
            start = int(params.get("cursor") or 0)
        except (TypeError, ValueError):
            return slack_error("invalid_arguments")
        with_metadata = str(params.get("include_all_metadata")).lower() in ("true", "1")
        found = [m for m in self.messages if m["channel"] == channel and float(m["ts"]) > oldest
                 and not m.get("deleted") and wanted(m)]
        if newest_first:
            found.reverse()
        page = found[start:start + limit]
        more = start + limit < len(found)
        messages = []
        for m in page:
            message: dict[str, Any] = {"type": "message", "user": events.BOT_USER_ID, "bot_id": events.BOT_ID,
                                       "text": m["text"], "ts": m["ts"]}
            if m["thread_ts"]:
                message["thread_ts"] = m["thread_ts"]
            if with_metadata and m.get("metadata"):
                message["metadata"] = m["metadata"]
            messages.append(message)
        return Response(200, {"ok": True, "messages": messages, "has_more": more,
                              "response_metadata": {"next_cursor": str(start + limit) if more else ""}})

    def _bucket(self, channel: str) -> TokenBucket:
        bucket = self.buckets.get(channel)
        if bucket is None:
            bucket = self.buckets[channel] = TokenBucket(float(self.knobs.post_burst), time.monotonic())
        return bucket

    def reset(self) -> None:
        self.messages.clear()
        self.buckets.clear()
        self.workspace.reset()
        self.responses.reset()
        self.streams.reset()


def _token_refused(req: Request, prefix: str) -> Response | None:
    """Slack's answer to a call without a token, or with a token of the wrong type; None if fine."""
    token = req.bearer
    if not token:
        return slack_error("not_authed")
    if not token.startswith(prefix):
        return slack_error("not_allowed_token_type")
    return None


def blocks_param(params: dict[str, Any]) -> list[Any] | Response | None:
    """`blocks` as Slack takes it (a JSON list, or a JSON text of one); invalid_blocks otherwise."""
    try:
        blocks = json_param(params.get("blocks"))
    except ValueError:
        return slack_error("invalid_blocks")
    if blocks is not None and not isinstance(blocks, list):
        return slack_error("invalid_blocks")
    return blocks
