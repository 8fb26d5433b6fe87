"""`ctx.stream`: an answer streamed into a thread as it is written (chat.startStream,
chat.appendStream, chat.stopStream), through the worker's stream sender.

A `Stream` only hands text to its sink: `append` returns at once, never waiting on Slack. The
sender (buidl_edge/delivery/streams.py) starts the streamed message, coalesces what accumulates
into as few appends as the app's budget allows, splits text past Slack's 12,000 characters a
call, waits out 429s, goes on in a new streamed message when Slack has ended the stream, and
keeps the stream's progress in the store. Safe from `threaded=True` handlers: every call reaches
the sink on the hub.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

# What a stream ends with when an exception leaves its `with` block (or its handler).
INTERRUPTED_NOTE = "\n\n_(The answer stopped here: something went wrong.)_"

# Runs a sink call on the worker's hub, from any thread (handler_threads.HubCall).
HubRunner = Callable[..., Any]


class StreamError(ValueError):
    """A stream used wrongly: no thread to stream into, text that is not text, text after stop."""


@dataclass(frozen=True)
class StreamTarget:
    """Where a stream goes: a thread, and (outside a DM) the person it answers."""

    channel: str
    thread_ts: str
    recipient_user_id: str | None = None
    recipient_team_id: str | None = None


class StreamSink(Protocol):
    """The worker's side of `ctx.stream` (the stream sender); every call returns without waiting on Slack."""

    def open(self, envelope_id: str, target: StreamTarget) -> str:
        """A new stream of this envelope's answer; its id."""

    def append(self, stream_id: str, markdown_text: str) -> None: ...

    def stop(self, stream_id: str, markdown_text: str | None = None,
             blocks: list[dict[str, Any]] | None = None) -> None: ...


def stream_target(payload: dict[str, Any], default_channel: str | None, thread_ts: str | None,
                  channel: str | None, recipient_user_id: str | None,
                  recipient_team_id: str | None) -> StreamTarget:
    """The caller's values, else the event's: its thread (`thread_ts`, else its own `ts`), its
    channel, its user and team as recipients."""
    event = payload.get("event")
    if not isinstance(event, dict):
        event = {}
    where = channel or default_channel
    thread = thread_ts or event.get("thread_ts") or event.get("ts") or (payload.get("message") or {}).get("ts")
    if not isinstance(where, str) or not where or not isinstance(thread, str) or not thread:
        raise StreamError("ctx.stream needs a channel and a thread: this envelope names none; "
                          "pass channel= and thread_ts=")
    user = recipient_user_id or event.get("user") or payload.get("user_id") or (payload.get("user") or {}).get("id")
    team = (recipient_team_id or event.get("team") or payload.get("team_id")
            or (payload.get("team") or {}).get("id") or event.get("user_team"))
    return StreamTarget(where, thread, user if isinstance(user, str) else None, team if isinstance(team, str) else None)


class Stream:
    """One streamed answer. A context manager: leaving the block stops it; an exception leaving
    it stops it with what was streamed and a short note, then goes on up (a handler error)."""

    def __init__(self, sink: StreamSink, stream_id: str, call: HubRunner | None = None) -> None:
        self.id = stream_id
        self._sink = sink
        self._call: HubRunner = call or (lambda fn, *args: fn(*args))
        self.stopped = False

    def append(self, markdown_text: str) -> None:
        """Add text to the answer; returns at once (it goes out as the app's budget allows)."""
        if not isinstance(markdown_text, str):
            raise StreamError(f"stream.append takes text, not {type(markdown_text).__name__}")
        if self.stopped:
            raise StreamError("stream.append after stop: the stream is over")
        if markdown_text:
            self._call(self._sink.append, self.id, markdown_text)

    def stop(self, markdown_text: str | None = None, blocks: list[dict[str, Any]] | None = None) -> None:
        """End the answer, with last text and blocks (e.g. feedback buttons); a second stop does nothing."""
        if self.stopped:
            return
        self.stopped = True
        self._call(self._sink.stop, self.id, markdown_text or None, blocks)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(INTERRUPTED_NOTE if exc is not None else None)
