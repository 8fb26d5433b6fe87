"""Streamed answers (`ctx.stream`) on the shared delivery loop: its third kind of delivery.

Handlers append text to a stream in memory (`open`, `append`, `stop`: the `StreamSink` of
api/stream.py; none waits on Slack). The loop claims the streams that need a call, at most one
call in flight per stream, spending a token of the method's bucket in the store for each:
appendStream (Tier 4) and start/stopStream (Tier 2) each have one budget for the app, shared by
every process and dyno, as the outbox's buckets are. What accumulated while a stream waited for
its token goes out in one call (coalesced), split at Slack's 12,000 characters. Then:

- a 429 pauses that method's bucket for every process until its Retry-After, and the text waits;
- `message_not_in_streaming_state` (Slack ended the stream, about 5 minutes after its start):
  the answer goes on in a new streamed message in the same thread, from the first text that had
  not landed, so every piece reaches the thread once and in order (a roll-over);
- a network failure or 5xx is tried again with backoff; any other refusal ends the stream.

Each stream's Slack ts and how far it got are saved in the store after every call that landed:
the re-run of an envelope whose worker was killed first stops the streams it left open, with a
short note (`stop_orphans`). The drain stops open streams with what they have.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from buidl_edge.api.stream import StreamTarget
from buidl_edge.config import Secret
from buidl_edge.delivery.loop import Delivered, DeliveryLoop, RetryPolicy
from buidl_edge.delivery.ratelimit import APPEND_STREAM, START_STREAM, STOP_STREAM, StreamLimits
from buidl_edge.delivery.stream_state import LiveStream, StreamCall
from buidl_edge.store.base import Claimed, DeliveryOutcome, EdgeStore, random_id
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover
from buidl_edge.webapi.client import RateLimited, SlackApiError, TransientApiError, WebApi

log = logging.getLogger("buidl_edge.streams")

# Slack's answers for a stream that is over (it ended it, or the message is gone).
NOT_STREAMING = frozenset({"message_not_in_streaming_state", "message_not_found"})
RETRYABLE_ERRORS = frozenset({"internal_error", "service_unavailable", "request_timeout"})
# What a stream left open by a killed worker ends with; its answer is given again below it.
ORPHAN_NOTE = "\n\n_(Interrupted: the answer is given again below.)_"


@dataclass
class StreamStats:
    """This process's figures, published with its heartbeat (`status`, /metrics)."""

    open: int = 0
    started: int = 0
    stopped: int = 0
    appends_sent: int = 0
    appends_coalesced: int = 0  # appended pieces that went out in a call with others, not one of their own
    rate_limited: int = 0
    rollovers: int = 0
    orphans_stopped: int = 0
    failed: int = 0
    in_flight: int = 0
    store_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class StreamSender:
    """One per worker: the streams' `Delivery` on a `DeliveryLoop`, and `ctx.stream`'s sink."""

    name = "streams"
    log = log

    def __init__(self, failover: Failover, webapi: WebApi, bot_token: Secret, owner: str,
                 limits: StreamLimits | None = None, concurrency: int = 16, poll_s: float = 0.25,
                 max_attempts: int = 5, backoff_base: float = 1.0, backoff_cap: float = 30.0) -> None:
        self.failover = failover
        self.webapi = webapi
        self.bot_token = bot_token
        self.owner = owner
        self.limits = limits or StreamLimits()
        self.retry = RetryPolicy(max_attempts, backoff_base, backoff_cap)
        self.stats = StreamStats()
        self.loop = DeliveryLoop(self, failover, self.stats, concurrency=concurrency, poll_s=poll_s)
        self.live: dict[str, LiveStream] = {}
        # When each method's bucket may next have a token, as the store last said: the store is
        # not asked again before (another process may spend it first; then it says later).
        self._ready_at: dict[str, float] = {}
        self._shared_failed = False  # this round's claim on the shared store failed: use the fallback

    def start(self, own_chores: bool = True) -> StreamSender:
        """`own_chores=False`: a worker runs `loop.chore_round` on its chores' timer."""
        self.loop.start(own_chores)
        return self

    # ------------------------------------------------------------ the sink (ctx.stream)

    def open(self, envelope_id: str, target: StreamTarget) -> str:
        stream = LiveStream(random_id(), envelope_id, self.owner, target)
        self.live[stream.id] = stream
        self.stats.open = len(self.live)
        return stream.id

    def append(self, stream_id: str, markdown_text: str) -> None:
        stream = self.live.get(stream_id)
        if stream is None or stream.stop_wanted:  # stopped by the drain, or ended by a refusal
            return
        stream.waiting.append(markdown_text)
        if not stream.in_flight and len(stream.waiting) == 1:
            self.loop.wake()

    def stop(self, stream_id: str, markdown_text: str | None = None,
             blocks: list[dict[str, Any]] | None = None) -> None:
        stream = self.live.get(stream_id)
        if stream is None or stream.stop_wanted:
            return
        stream.stop_wanted = True
        stream.stop_blocks = blocks
        if markdown_text:
            stream.waiting.append(markdown_text)
        if stream.ts is None and not stream.waiting and not stream.in_flight:
            self._finish(stream)  # nothing was ever streamed: nothing to stop in Slack
        else:
            self.loop.wake()

    # ------------------------------------------------------------ crash and drain

    def stop_orphans(self, envelope_id: str, timeout: float) -> int:
        """Stop, with a short note, the streams of this envelope that a dead worker left open in
        Slack (before its handler runs again); how many. Waits for them up to `timeout`."""
        try:
            rows = self.failover.store.stream_orphans(envelope_id)
        except StoreError as exc:
            log.warning("cannot look for streams left open by envelope %s (%s); any stays open until Slack "
                        "ends it", envelope_id, exc)
            return 0
        orphans = []
        for row in rows:
            if row.stream_id in self.live:
                continue  # ours, and alive
            stream = LiveStream(row.stream_id, envelope_id, self.owner, StreamTarget(row.channel, row.thread_ts),
                                ts=row.ts, sent_chars=row.sent_chars, messages=row.messages, stop_wanted=True,
                                orphan=True)
            if row.ts is None:  # never started in Slack: only the record to close
                stream.stopped = True
                self.failover.write("stream_save", _saver(stream))
                continue
            stream.waiting.append(ORPHAN_NOTE)
            self.live[stream.id] = stream
            orphans.append(stream)
        if orphans:
            log.info("stopping %d stream(s) of envelope %s left open by %s", len(orphans), envelope_id,
                     rows[0].owner)
            self.loop.wake()
            deadline = time.monotonic() + timeout
            for stream in orphans:
                stream.done.wait(max(0.0, deadline - time.monotonic()))
        return len(orphans)

    def drain(self, timeout: float) -> bool:
        """SIGTERM: stop every open stream with what it has, let the calls finish, stop the loop.
        False (said) when some could not be stopped in time."""
        deadline = time.monotonic() + timeout
        for stream in list(self.live.values()):
            self.stop(stream.id)
        while self.live and time.monotonic() < deadline:
            next(iter(self.live.values())).done.wait(max(0.0, deadline - time.monotonic()))
        left = len(self.live)
        if left:
            log.warning("%d stream(s) still open at exit: Slack ends them by itself within about 5 minutes", left)
        drained = self.loop.stop(max(0.1, deadline - time.monotonic()))
        return not left and drained.clean

    # ------------------------------------------------------------ the loop's side

    def claim(self, store: EdgeStore, limit: int) -> Claimed[StreamCall]:
        shared = store is self.failover.store
        if not shared and not self._shared_failed:
            return Claimed([], None)
        now = time.time()
        ready: list[tuple[LiveStream, str]] = []
        next_at: float | None = None
        for stream in sorted(self.live.values(), key=lambda s: s.last_call_at):
            method = stream.next_method()
            if stream.in_flight or method is None:
                continue
            at = max(stream.not_before, self._ready_at.get(method, 0.0))
            if at > now:
                next_at = at if next_at is None else min(next_at, at)
            elif len(ready) < limit:
                ready.append((stream, method))
        if not ready:
            return Claimed([], next_at)
        try:
            granted, later = store.stream_take([method for _, method in ready], self.limits)
        except StoreError:
            self._shared_failed = shared
            raise
        self._shared_failed = False
        calls = []
        for (stream, method), ok in zip(ready, granted):
            if not ok:
                self._ready_at[method] = later or now
                continue
            stream.in_flight, stream.last_call_at = True, now
            text, pieces = stream.take()
            calls.append(StreamCall(stream, method, text, pieces))
        if later is not None:
            next_at = later if next_at is None else min(next_at, later)
        return Claimed(calls, next_at)

    def deliver(self, call: StreamCall) -> Delivered:
        stream, target = call.stream, call.stream.target
        try:
            if call.method == START_STREAM:
                stream.ts = self.webapi.start_stream(self.bot_token, target.channel, target.thread_ts, call.text,
                                                     target.recipient_user_id, target.recipient_team_id)
            elif call.method == APPEND_STREAM:
                self.webapi.append_stream(self.bot_token, target.channel, str(stream.ts), call.text)
            else:
                self.webapi.stop_stream(self.bot_token, target.channel, str(stream.ts), call.text,
                                        stream.stop_blocks)
        except RateLimited as exc:
            return self._not_landed(call, DeliveryOutcome("ratelimited", "ratelimited", time.time() + exc.retry_after))
        except TransientApiError as exc:
            return self._not_landed(call, self._retry(stream, exc.error))
        except SlackApiError as exc:
            if exc.error in NOT_STREAMING and call.method != START_STREAM:
                return self._not_landed(call, DeliveryOutcome("retry", exc.error))
            if exc.error in RETRYABLE_ERRORS:
                return self._not_landed(call, self._retry(stream, exc.error))
            return self._not_landed(call, DeliveryOutcome("failed", exc.error))
        except Exception as exc:  # a bug must not kill the sender: the call is retried, then given up
            log.exception("%s for stream %s raised", call.method, stream.id)
            return self._not_landed(call, self._retry(stream, f"exception:{type(exc).__name__}"))
        self._landed(call)
        return Delivered(DeliveryOutcome("sent", ts=stream.ts), then=lambda: self._released(stream))

    def settle(self, store: EdgeStore, call: StreamCall, outcome: DeliveryOutcome) -> None:
        if outcome.kind == "ratelimited":
            store.stream_pause(call.method, outcome.retry_at)
        else:
            store.stream_save(call.stream.row())

    def record(self, call: StreamCall, outcome: DeliveryOutcome, settled: Any) -> None:
        """Counted where the outcome is known (deliver); nothing more to say once it is stored."""

    def waiting(self, store: EdgeStore) -> int:
        return sum(1 for s in self.live.values() if s.next_method() is not None)

    def chores(self) -> None:
        self.stats.open = len(self.live)

    # ------------------------------------------------------------ outcomes

    def _landed(self, call: StreamCall) -> None:
        stream = call.stream
        stream.sent_chars += len(call.text)
        stream.attempts = 0
        if call.method == START_STREAM:
            stream.messages += 1
            if stream.messages == 1:
                self.stats.started += 1
        elif call.method == APPEND_STREAM:
            self.stats.appends_sent += 1
        if call.pieces > 1:
            self.stats.appends_coalesced += call.pieces - 1
        if call.method == STOP_STREAM:
            if stream.orphan:
                self.stats.orphans_stopped += 1
            self._finish(stream)

    def _not_landed(self, call: StreamCall, outcome: DeliveryOutcome) -> Delivered:
        stream = call.stream
        stream.give_back(call.text)
        if outcome.kind == "ratelimited":
            self.stats.rate_limited += 1
            self._ready_at[call.method] = outcome.retry_at
            log.info("429 on %s: every stream waits %.0fs", call.method, outcome.retry_at - time.time())
        elif outcome.kind == "retry" and outcome.error in NOT_STREAMING:
            if stream.orphan or (call.method == STOP_STREAM and not stream.waiting):
                self._finish(stream)  # over already; nothing of the answer was left to say
            else:
                stream.ts = None  # the answer goes on in a new streamed message in the thread
                self.stats.rollovers += 1
                log.info("stream %s in %s was ended by Slack (%s); going on in a new message", stream.id,
                         stream.target.channel, outcome.error)
        elif outcome.kind == "failed":
            self.stats.failed += 1
            log.error("%s in %s failed for good: %s; the stream ends (%d characters were sent)", call.method,
                      stream.target.channel, outcome.error, stream.sent_chars)
            stream.error = outcome.error
            stream.waiting.clear()
            self._finish(stream)
        return Delivered(outcome, then=lambda: self._released(stream))

    def _retry(self, stream: LiveStream, error: str | None) -> DeliveryOutcome:
        stream.attempts += 1
        outcome = self.retry.retry_or_fail(error, stream.attempts)
        if outcome.kind == "retry":
            stream.not_before = outcome.retry_at
            log.warning("stream call in %s failed (%s); attempt %d of %d", stream.target.channel, error,
                        stream.attempts, self.retry.max_attempts)
        return outcome

    def _finish(self, stream: LiveStream) -> None:
        stream.stopped = True
        if not stream.orphan:
            self.stats.stopped += 1
        self.live.pop(stream.id, None)
        self.stats.open = len(self.live)
        stream.done.set()

    def _released(self, stream: LiveStream) -> None:
        stream.in_flight = False
        self.loop.wake()


def _saver(stream: LiveStream) -> Callable[[EdgeStore], None]:
    """Save one stream's record, for `Failover.write`."""
    return lambda store: store.stream_save(stream.row())
