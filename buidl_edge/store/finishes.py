"""The handlers' finishes on their way to the shared store, for the Failover: journaled until the
store has them, written back when it answers again after refusing them.

Every finish is appended to this process's journal (finish_journal.py) before it is written to the
store: a kill -9 can come while the write waits (a held lock, a busy thread) or after it failed (a
full disk, Redis away, the replies going out from memory), and the journal is what keeps the sweep
from running the handler again and posting its replies twice. It costs one small write to memory
(/dev/shm) per finish. An entry is needed until the store has the finish done and none of its
replies waits to be posted from memory; the journal is emptied whenever no entry is needed, and
rewritten with only the needed ones when it grows past COMPACT_BYTES (a steady stream of finishes
may never leave it empty).

A finish the store refused is written to it when the episode ends (`write_back`: the envelope done,
without its replies, which go out from memory).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from buidl_edge.store.base import EdgeStore, Reply, reply_key
from buidl_edge.store.finish_journal import DeadFinishes, FinishJournal, JournaledFinish
from buidl_edge.store.spill_files import DirLook

# Past this size, or this long since it was last emptied, the journal is rewritten with only the
# entries still needed: a line of a finish the store has must not outlive the store's memory of its
# replies' keys (BUIDL_RETENTION_S, 10 minutes at least), or a recovery would queue them again.
COMPACT_BYTES = 1 << 20
COMPACT_AFTER_S = 60.0


@dataclass
class _Finish:
    replies: Sequence[Reply]
    error: str | None
    unsettled: set[str] = field(default_factory=set)  # replies queued in the fallback, not yet posted
    fell_back: bool = False  # its replies were queued in the fallback (and go out from memory)
    stored: bool = False  # the shared store has it done

    def settled(self, envelope_id: str) -> set[str]:
        """The keys of its replies already posted (or failed) from memory."""
        if not self.fell_back:
            return set()
        return {reply_key(envelope_id, i) for i in range(len(self.replies))} - self.unsettled


class PendingFinishes:
    def __init__(self, journal: FinishJournal | None) -> None:
        self.journal = journal
        self._needed: dict[str, _Finish] = {}  # journaled, and the entry still needed
        self._fell_back: dict[str, _Finish] = {}  # to write to the shared store when it answers
        self._compacted_at = time.monotonic()  # the journal last emptied or rewritten

    # ------------------------------------------------------------ one finish

    def begin(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        """Journaled before the store sees it: from here on a kill -9 does not run it again."""
        finish = _Finish(replies, error)
        if self.journal is not None and self.journal.record(envelope_id, replies, error):
            self._needed[envelope_id] = finish

    def landed(self, envelope_id: str) -> None:
        """The shared store took it, replies and all."""
        finish = self._needed.get(envelope_id)
        if finish is not None:
            finish.stored = True
            self._release(envelope_id, finish)

    def fell_back(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> None:
        """The store refused it: its replies go out from memory, and it is written back later."""
        finish = self._needed.get(envelope_id) or _Finish(replies, error)
        finish.fell_back = True
        finish.unsettled = {reply_key(envelope_id, i) for i in range(len(replies))}
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

    # ------------------------------------------------------------ after an episode

    def unwritten(self) -> int:
        return len(self._fell_back)

    def write_back(self, store: EdgeStore) -> None:
        """Mark done in the shared store what finished on the fallback (its replies went, or go, out
        from memory); raises StoreError, with the rest left for the next try."""
        for envelope_id, finish in list(self._fell_back.items()):
            store.finish(envelope_id, [], finish.error)
            del self._fell_back[envelope_id]
            finish.stored = True
            self._release(envelope_id, finish)

    # ------------------------------------------------------------ the journals

    def read_dead(self, look: DirLook | None = None) -> DeadFinishes:
        """What the journals of this host's dead workers hold (for the sweep)."""
        return self.journal.read_dead(look) if self.journal is not None else DeadFinishes()

    def finishes_of(self, owner: str) -> dict[str, JournaledFinish]:
        return self.journal.finishes_of(owner) if self.journal is not None else {}

    def _release(self, envelope_id: str, finish: _Finish) -> None:
        """Its entry is needed no more once stored with nothing left to post from memory."""
        if not finish.stored or finish.unsettled or self.journal is None:
            return
        self._needed.pop(envelope_id, None)
        now = time.monotonic()
        if not self._needed:
            self.journal.empty()
        elif self.journal.size > COMPACT_BYTES or now - self._compacted_at > COMPACT_AFTER_S:
            self.journal.rewrite([(eid, f.replies, f.error, f.settled(eid)) for eid, f in self._needed.items()])
        else:
            return
        self._compacted_at = now
