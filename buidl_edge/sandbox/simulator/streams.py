"""Streamed messages: chat.startStream, chat.appendStream and chat.stopStream, as Slack has them.

A stream is a bot message in a thread whose text grows with each append until it is stopped,
or until Slack ends it by itself (`stream_expiry` seconds after its start; about 5 minutes in
Slack, seconds in tests). Every later call on an ended stream answers
`message_not_in_streaming_state`. appendStream is Tier 4 and start/stop Tier 2, one budget per
method for the app: over it, HTTP 429 with Retry-After. Each stream keeps its pieces in order,
so tests read what reached each thread, and when, through `/_sim/state` (`streams`).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import events
from .http import Request, Response, json_param, slack_error
from .knobs import Knobs
from .ratelimit import TokenBucket
from .workspace import TS

MAX_MARKDOWN_CHARS = 12_000
STREAMING, STOPPED, EXPIRED = "streaming", "stopped", "expired"

Refusal = Callable[[Request, str], "Response | None"]
# Adds the stream's message to the channel's messages and answers its record (webapi.py).
PostMessage = Callable[[str, str, str], "dict[str, Any]"]


class Streams:
    def __init__(self, knobs: Knobs, counters: Counter[str], ts: events.TsClock, refused: Refusal,
                 post: PostMessage) -> None:
        self.knobs = knobs
        self.counters = counters
        self.ts = ts
        self.refused = refused
        self.post = post
        self.streams: dict[tuple[str, str], dict[str, Any]] = {}  # (channel, ts) -> the stream, in start order
        self.buckets: dict[str, TokenBucket] = {}

    def methods(self) -> dict[str, Callable[[Request], Response]]:
        return {"chat.startStream": self.start, "chat.appendStream": self.append, "chat.stopStream": self.stop}

    def start(self, req: Request) -> Response:
        refused = self._checked(req)
        if refused:
            return refused
        params = req.params
        channel = str(params["channel"])
        thread_ts = params.get("thread_ts")
        if not (isinstance(thread_ts, str) and TS.fullmatch(thread_ts)):
            return slack_error("invalid_arguments" if not thread_ts else "invalid_thread_ts")
        if not channel.startswith("D") and not (params.get("recipient_user_id") and params.get("recipient_team_id")):
            # Outside a DM, Slack must know whom the stream is for.
            return slack_error("invalid_arguments")
        text = _markdown(params, required=False)
        if isinstance(text, Response):
            return text
        limited = self._limit("chat.startStream")
        if limited:
            return limited
        ts = self.ts.next()
        message = self.post(channel, thread_ts, ts)
        stream: dict[str, Any] = {
            "channel": channel, "thread_ts": thread_ts, "ts": ts,
            "recipient_user_id": params.get("recipient_user_id"),
            "recipient_team_id": params.get("recipient_team_id"),
            "pieces": [], "arrived_at": [], "state": STREAMING, "started_at": time.time(), "ended_at": None,
            "blocks": None, "metadata": None, "_started": time.monotonic(), "_message": message}
        self.streams[(channel, ts)] = stream
        self._add(stream, text)
        self.counters["streams_started"] += 1
        return Response(200, {"ok": True, "channel": channel, "ts": ts})

    def append(self, req: Request) -> Response:
        found = self._open_stream(req)
        if isinstance(found, Response):
            return found
        text = _markdown(req.params, required=True)
        if isinstance(text, Response):
            return text
        limited = self._limit("chat.appendStream")
        if limited:
            return limited
        self._add(found, text)
        self.counters["stream_appends"] += 1
        return Response(200, {"ok": True, "channel": found["channel"], "ts": found["ts"]})

    def stop(self, req: Request) -> Response:
        found = self._open_stream(req)
        if isinstance(found, Response):
            return found
        params = req.params
        text = _markdown(params, required=False)
        if isinstance(text, Response):
            return text
        try:
            blocks, metadata = json_param(params.get("blocks")), json_param(params.get("metadata"))
        except ValueError:
            return slack_error("invalid_arguments")
        if blocks is not None and not isinstance(blocks, list):
            return slack_error("invalid_blocks")
        if metadata is not None and not (isinstance(metadata, dict) and metadata.get("event_type")):
            return slack_error("invalid_metadata_format")
        limited = self._limit("chat.stopStream")
        if limited:
            return limited
        self._add(found, text)
        found.update(state=STOPPED, ended_at=time.time(), blocks=blocks, metadata=metadata)
        if blocks:
            found["_message"]["blocks"] = blocks
        self.counters["streams_stopped"] += 1
        message = {"type": "message", "user": events.BOT_USER_ID, "bot_id": events.BOT_ID,
                   "text": found["_message"]["text"], "ts": found["ts"], "thread_ts": found["thread_ts"]}
        return Response(200, {"ok": True, "channel": found["channel"], "ts": found["ts"], "message": message})

    def _checked(self, req: Request) -> Response | None:
        """Slack's refusals that come before the stream is looked at: token, body, channel."""
        refused = self.refused(req, "xoxb-")
        if refused:
            return refused
        if req.body_error:
            return slack_error("invalid_arguments")
        channel = str(req.params.get("channel") or "")
        if not channel:
            return slack_error("channel_not_found")
        if channel in self.knobs.post_errors:
            return slack_error(self.knobs.post_errors[channel])
        return None

    def _open_stream(self, req: Request) -> dict[str, Any] | Response:
        """The stream named by `channel` and `ts`, if still streaming; else Slack's refusal."""
        refused = self._checked(req)
        if refused:
            return refused
        ts = req.params.get("ts")
        if not ts:
            return slack_error("invalid_arguments")
        stream = self.streams.get((str(req.params["channel"]), str(ts)))
        if stream is None:
            return slack_error("message_not_found")
        self._expire(stream, time.monotonic())
        if stream["state"] != STREAMING:
            self.counters["stream_calls_not_streaming"] += 1
            return slack_error("message_not_in_streaming_state")
        return stream

    def _expire(self, stream: dict[str, Any], now: float) -> None:
        """Slack ends a stream by itself once it has been open `stream_expiry` seconds."""
        if stream["state"] == STREAMING and now - stream["_started"] >= self.knobs.stream_expiry:
            stream.update(state=EXPIRED, ended_at=time.time())
            self.counters["streams_expired"] += 1

    def _add(self, stream: dict[str, Any], text: str | None) -> None:
        if text:
            stream["pieces"].append(text)
            stream["arrived_at"].append(time.time())  # when each call's text reached Slack (benchmarks)
            stream["_message"]["text"] += text

    def _limit(self, method: str) -> Response | None:
        """One bucket per method for the app; over it, 429 with the seconds until a token."""
        if method == "chat.appendStream":
            per_minute, burst = self.knobs.stream_append_per_minute, self.knobs.stream_append_burst
        else:
            per_minute, burst = self.knobs.stream_start_stop_per_minute, self.knobs.stream_start_stop_burst
        now = time.monotonic()
        bucket = self.buckets.get(method)
        if bucket is None:
            bucket = self.buckets[method] = TokenBucket(float(burst), now)
        wait = bucket.take(now, per_minute / 60.0, max(1, burst))
        if wait <= 0:
            return None
        self.counters["stream_429s"] += 1
        self.counters[f"429s:{method}"] += 1
        return slack_error("ratelimited", 429, [("Retry-After", str(max(1, math.ceil(wait))))])

    def to_list(self) -> list[dict[str, Any]]:
        """Every stream since the last reset, in start order, with its text so far."""
        now = time.monotonic()
        listed = []
        for stream in self.streams.values():
            self._expire(stream, now)
            shown = {k: v for k, v in stream.items() if not k.startswith("_")}
            shown["text"] = "".join(stream["pieces"])
            listed.append(shown)
        return listed

    def reset(self) -> None:
        self.streams.clear()
        self.buckets.clear()


def _markdown(params: dict[str, Any], required: bool) -> str | Response | None:
    """The call's text: `markdown_text`, or the text of its `markdown_text` chunks."""
    text = params.get("markdown_text")
    try:
        chunks = json_param(params.get("chunks"))
    except ValueError:
        return slack_error("invalid_chunks")
    if chunks is not None:
        if not isinstance(chunks, list) or not all(isinstance(c, dict) and isinstance(c.get("type"), str)
                                                   for c in chunks):
            return slack_error("invalid_chunks")
        texts = [c.get("text") for c in chunks if c["type"] == "markdown_text"]
        if not all(isinstance(t, str) for t in texts):
            return slack_error("invalid_chunks")
        text = (str(text) if text else "") + "".join(str(t) for t in texts)
    if text is None or text == "":
        return slack_error("no_text") if required and chunks is None else None
    if not isinstance(text, str):
        return slack_error("invalid_arguments")
    if len(text) > MAX_MARKDOWN_CHARS:
        return slack_error("msg_too_long")
    return text
