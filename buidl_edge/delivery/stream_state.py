"""One streamed answer as the stream sender holds it in memory: the text not yet sent, where it
stands in Slack, and which call it needs next. No I/O: the sender (streams.py) makes the calls.

Text goes out in order and exactly once. A call takes text from the front of what waits (at most
Slack's 12,000 characters); a call that did not land (a 429, a network failure, a stream Slack
had already ended) gives it back to the front, so the next call, in this message or in the next
one, carries it again.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent.event

from buidl_edge.api.stream import StreamTarget
from buidl_edge.delivery.ratelimit import APPEND_STREAM, START_STREAM, STOP_STREAM
from buidl_edge.store.base import StreamRow

# Slack takes at most this many characters of markdown_text in one call.
MAX_CHARS = 12_000


@dataclass
class LiveStream:
    id: str
    envelope_id: str
    owner: str
    target: StreamTarget
    ts: str | None = None  # the streamed message open in Slack now
    sent_chars: int = 0
    messages: int = 0
    waiting: deque[str] = field(default_factory=deque)  # appended, not sent yet, in order
    stop_wanted: bool = False
    stop_blocks: list[dict[str, Any]] | None = None
    orphan: bool = False  # left open by a dead worker: only stopped, never rolled over
    in_flight: bool = False
    not_before: float = 0.0  # a failed call's backoff
    attempts: int = 0  # failed calls in a row
    last_call_at: float = 0.0  # who waited longest goes first when the budget is short
    stopped: bool = False
    error: str | None = None
    done: gevent.event.Event = field(default_factory=gevent.event.Event)

    @property
    def waiting_chars(self) -> int:
        return sum(len(piece) for piece in self.waiting)

    def next_method(self) -> str | None:
        """The call this stream needs now, if any: start (with the first text), append, or stop
        (with the last text, when it fits in one call)."""
        if self.stopped:
            return None
        if self.ts is None:
            return START_STREAM if self.waiting else None
        if self.stop_wanted and self.waiting_chars <= MAX_CHARS:
            return STOP_STREAM
        return APPEND_STREAM if self.waiting else None

    def take(self) -> tuple[str, int]:
        """Text for one call from the front of what waits (a piece past the limit is split), and
        how many pieces (or parts of one) it joins."""
        parts: list[str] = []
        room = MAX_CHARS
        while self.waiting and room > 0:
            piece = self.waiting.popleft()
            if len(piece) > room:
                self.waiting.appendleft(piece[room:])
                piece = piece[:room]
            parts.append(piece)
            room -= len(piece)
        return "".join(parts), len(parts)

    def give_back(self, text: str) -> None:
        """A call that did not land: its text goes first in the next one."""
        if text:
            self.waiting.appendleft(text)

    def row(self) -> StreamRow:
        return StreamRow(self.id, self.envelope_id, self.owner, self.target.channel, self.target.thread_ts,
                         self.ts, self.sent_chars, self.messages, "stopped" if self.stopped else "open")


@dataclass(frozen=True)
class StreamCall:
    """One call the loop delivers: `method` on `stream`, carrying `text` (joined from `pieces`)."""

    stream: LiveStream
    method: str
    text: str
    pieces: int
