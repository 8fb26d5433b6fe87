"""A worker's periodic store work, on one greenlet and one timer.

Each chore has an interval; the timer sleeps until the earliest one is due, runs every chore that
is due, and sleeps again. A chore with nothing to do returns at once, without a store call: an idle
worker's chores are one wake-up every two seconds (runtime/worker.py has the intervals). Whether
anything changed is one read of the store's change token a round (`RoundTokens`), shared by the
chores that ask.

A chore that fails on the store is tried again at its next turn, and the failure counts into the
worker's one degraded episode (StoreHealth says it once), never a line per round. Any other
exception is a bug: logged with its traceback, and the chore goes on.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import gevent

from buidl_edge.store.base import EdgeStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.health import StoreHealth

log = logging.getLogger("buidl_edge.worker")

# A chore due this close after a round's start runs in that round. The timer's wake-ups come a
# little off time (late on a busy hub, early by the loop's cached clock); without it a 10 s chore
# falls due just before or after the 2 s tick it shares and costs a wake-up of its own.
SAME_ROUND_S = 0.05


@dataclass
class Chore:
    name: str
    interval_s: float
    run: Callable[[], None]
    due_at: float = 0.0  # monotonic; 0: at the first turn


class RoundTokens:
    """A store's change tokens in this chores' round, each read once, at the first chore that asks.

    Each chore compares a token with one it kept from an earlier look. A token read earlier in
    the round than a chore's own reads can only make it see a change that is not there (a look
    for nothing), never miss one: what is written after the read moves the next round's token."""

    def __init__(self) -> None:
        self._read: dict[tuple[int, bool], Hashable | None] = {}

    def new_round(self) -> None:
        self._read.clear()

    def of(self, store: EdgeStore, others_only: bool = False) -> Hashable | None:
        """`store.change_token(others_only)`, as the round's first ask read it."""
        key = (id(store), others_only)
        if key not in self._read:
            self._read[key] = store.change_token(others_only)
        return self._read[key]


class Chores:
    def __init__(self, chores: list[Chore], health: StoreHealth, tokens: RoundTokens | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chores = chores
        self.health = health
        self.tokens = tokens or RoundTokens()
        self._clock = clock
        self._greenlet: gevent.Greenlet | None = None
        self.rounds = 0  # wake-ups of the timer: what an idle worker costs is counted in these

    def start(self) -> Chores:
        self._greenlet = gevent.spawn(self._loop)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def run_due(self) -> float:
        """Run every chore that is due; the monotonic time the next one is.

        Each one's next turn counts from the start of this round, not from its own end: chores
        of the same interval stay on the same tick, one wake-up for all of them."""
        started = self._clock()
        self.rounds += 1
        self.tokens.new_round()
        for chore in self.chores:
            if started + SAME_ROUND_S >= chore.due_at:
                self._run(chore)
                chore.due_at = started + chore.interval_s
        return min(chore.due_at for chore in self.chores)

    def _run(self, chore: Chore) -> None:
        try:
            chore.run()
        except StoreError as exc:  # retried at its next turn; said once per episode; acking goes on
            self.health.failed(chore.name, exc)
        except Exception:  # a bug: said with its traceback, and the other chores go on
            log.exception("chore %s failed", chore.name)

    def _loop(self) -> None:
        while True:
            next_at = self.run_due()
            gevent.sleep(max(0.0, next_at - self._clock()))
