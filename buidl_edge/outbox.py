"""Sending replies to chat.postMessage in order, honouring Retry-After.

This is the in-process sender; the durable, shared-rate outbox replaces its
queue without changing `send`/`flush`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import gevent
import gevent.queue

from buidl_edge.config import Secret
from buidl_edge.connection import backoff_delay
from buidl_edge.store.base import Reply
from buidl_edge.webapi import RateLimited, SlackApiError, TransientApiError, WebApi

log = logging.getLogger("buidl_edge.outbox")

MAX_ATTEMPTS = 5


@dataclass
class OutboxStats:
    sent: int = 0
    failed: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class DirectOutbox:
    """One sender greenlet drains a queue, so replies leave in the order handlers made them."""

    def __init__(self, webapi: WebApi, bot_token: Secret, backoff_base: float = 1.0, backoff_cap: float = 30.0) -> None:
        self.webapi = webapi
        self.bot_token = bot_token
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stats = OutboxStats()
        self._queue: gevent.queue.JoinableQueue = gevent.queue.JoinableQueue()
        self._sender = gevent.spawn(self._drain)

    def send(self, replies: Iterable[Reply]) -> None:
        for reply in replies:
            self._queue.put(reply)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent or failed; False on timeout."""
        return self._queue.join(timeout=timeout)

    def _drain(self) -> None:
        while True:
            reply = self._queue.get()
            try:
                self._post(reply)
            finally:
                self._queue.task_done()

    def _post(self, reply: Reply) -> None:
        for attempt in range(MAX_ATTEMPTS):
            try:
                self.webapi.post_message(self.bot_token, reply.channel, reply.text, reply.blocks, reply.thread_ts)
            except RateLimited as exc:
                self.stats.rate_limited += 1
                gevent.sleep(exc.retry_after)
                continue
            except TransientApiError as exc:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                log.warning("chat.postMessage to %s failed (%s); retry in %.1fs", reply.channel, exc.error, delay)
                gevent.sleep(delay)
                continue
            except SlackApiError as exc:
                self.stats.failed += 1
                log.error("chat.postMessage to %s refused: %s", reply.channel, exc.error)
                return
            self.stats.sent += 1
            return
        self.stats.failed += 1
        log.error("chat.postMessage to %s gave up after %d attempts", reply.channel, MAX_ATTEMPTS)
