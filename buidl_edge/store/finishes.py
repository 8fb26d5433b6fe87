"""The handlers' finishes on their way to the shared store, for the Failover: journaled when they
cannot land, written back when the store answers again.

A finish is *in flight* from the moment the handler is done until the store took it. It is written
to this process's journal (finish_journal.py), before anything depends on it, when:

- an episode is on as the handler finishes (the write may wait on a held lock, or fail);
- an episode begins while it is in flight, or it has waited JOURNAL_AFTER_S (a lock held before
  anyone noticed): a kill -9 then would otherwise have it run again;
- the store refused it, before its replies are queued in the fallback (and go out from memory).

A finish that fell back is written to the shared store when the episode ends (`write_back`: the
envelope done, without its replies, which go out from memory). Its journal entry is needed until
that write landed and every one of its replies was settled from memory; the journal is emptied when
no entry is needed any more.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent

from buidl_edge.store.base import EdgeStore, Reply, reply_key
from buidl_edge.store.finish_journal import DeadFinishes, FinishJournal, JournaledFinish

# A finish in flight this long is journaled even before an episode is known.
JOURNAL_AFTER_S = 0.25


@dataclass
class _Finish:
    replies: Sequence[Reply]
    error: str | None
    since: float
    journaled: bool = False
    unsettled: set[str] = field(default_factory=set)  # replies queued in the fallback, not yet posted
    stored: bool = False  # the shared store has it done


class PendingFinishes:
    def __init__(self, journal: FinishJournal | None, degraded: Callable[[], bool]) -> None:
        self.journal = journal
        self._degraded = degraded
        self._in_flight: dict[str, _Finish] = {}
        self._fell_back: dict[str, _Finish] = {}  # to write to the shared store when it answers
        self._needed: dict[str, _Finish] = {}  # journaled, and the journal still needed for them
        self._watch: gevent.Greenlet | None = None
        self.journaled = 0

    # ------------------------------------------------------------ one finish

    def begin(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        finish = self._in_flight[envelope_id] = _Finish(replies, error, time.monotonic())
        if self._degraded():
            self._journal(envelope_id, finish)
        elif self.journal is not None and self._watch is None:
            self._watch = gevent.spawn_later(JOURNAL_AFTER_S, self._journal_late)

    def landed(self, envelope_id: str) -> None:
        """The shared store took it, replies and all."""
        finish = self._in_flight.pop(envelope_id, None)
        if finish is not None and finish.journaled:
            finish.stored = True
            self._release(envelope_id, finish)

    def fell_back(self, envelope_id: str) -> None:
        """The store refused it: journaled before its replies go to the fallback's outbox."""
        finish = self._in_flight.pop(envelope_id, None)
        if finish is None:
            return
        self._journal(envelope_id, finish)
        finish.unsettled = {reply_key(envelope_id, i) for i in range(len(finish.replies))}
        self._fell_back[envelope_id] = finish

    def reply_settled(self, key: str) -> None:
        """A reply posted (or failed for good): if it went out from memory, never again."""
        envelope_id = key.rpartition(":")[0]
        finish = self._needed.get(envelope_id)
        if finish is None or key not in finish.unsettled:
            return
        finish.unsettled.discard(key)
        if self.journal is not None:
            self.journal.settled(key)
        self._release(envelope_id, finish)

    # ------------------------------------------------------------ the episode

    def journal_in_flight(self) -> None:
        """An episode began: every finish still on its way may be held up by it."""
        for envelope_id, finish in self._in_flight.items():
            self._journal(envelope_id, finish)

    def unwritten(self) -> int:
        return len(self._fell_back)

    def read_dead(self) -> DeadFinishes:
        """What the journals of this host's dead workers hold (for the sweep)."""
        return self.journal.read_dead() if self.journal is not None else DeadFinishes()

    def finishes_of(self, owner: str) -> dict[str, JournaledFinish]:
        return self.journal.finishes_of(owner) if self.journal is not None else {}

    def write_back(self, store: EdgeStore) -> None:
        """Mark done in the shared store what finished on the fallback (its replies went, or go, out
        from memory); raises StoreError, with the rest left for the next try."""
        for envelope_id, finish in list(self._fell_back.items()):
            store.finish(envelope_id, [], finish.error)
            del self._fell_back[envelope_id]
            finish.stored = True
            self._release(envelope_id, finish)

    # ------------------------------------------------------------ the journal

    def _journal(self, envelope_id: str, finish: _Finish) -> None:
        if finish.journaled or self.journal is None:
            return
        finish.journaled = True
        self.journaled += 1
        self.journal.record(envelope_id, finish.replies, finish.error)
        self._needed[envelope_id] = finish

    def _release(self, envelope_id: str, finish: _Finish) -> None:
        """Its entry is needed no more once stored with nothing left to post from memory."""
        if not finish.stored or finish.unsettled:
            return
        self._needed.pop(envelope_id, None)
        if not self._needed and self.journal is not None:
            self.journal.empty()

    def _journal_late(self) -> None:
        """Journal what has waited JOURNAL_AFTER_S; look again while anything is in flight."""
        self._watch = None
        now = time.monotonic()
        for envelope_id, finish in list(self._in_flight.items()):
            if now - finish.since >= JOURNAL_AFTER_S:
                self._journal(envelope_id, finish)
        if self._in_flight:
            self._watch = gevent.spawn_later(JOURNAL_AFTER_S, self._journal_late)

