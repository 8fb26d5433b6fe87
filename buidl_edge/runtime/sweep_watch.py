"""When a sweep can find anything: the chores look at the store only then, not every second.

A sweep takes over rows in flight under another owner whose process is dead (on this host) or
whose lease ran out. Nothing else makes a row sweepable, so after one look at who else holds rows
(`leases_elsewhere`, a read) the next look is due only when:

- another process wrote since (the change token moved; this worker's own claims and finishes do
  not count, it never sweeps its own rows): a new row, perhaps of a peer that may die;
- an owner seen holding rows is now a dead process of this host (a signal-0 check, no store call);
- the earliest lease seen has run out (another host's dead worker, or an operator's `inbox retry`).

A store that cannot give a change token (Redis) or the leases is looked at every round.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from buidl_edge.delivery.loop import TokenReader, read_token_now
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.owners import is_dead_local


class SweepWatch:
    def __init__(self, store: EdgeStore, owner: str, host: str, token_of: TokenReader = read_token_now,
                 clock: Callable[[], float] = time.time) -> None:
        """`token_of`: how `due` reads the change token (the chores' one read a round)."""
        self.store = store
        self._token_of = token_of
        self.owner = owner
        self.host = host
        self._clock = clock
        self._token: Hashable | None = None
        self._held: dict[str, float] | None = None  # None: never looked, or the store cannot say
        self.looks = 0  # reads of the leases (published with the heartbeat)
        self.sweeps = 0  # sweeps run because a look found something to take

    def due(self) -> bool:
        """True when a look at the leases could find a row to take."""
        if self._held is None:
            return True
        token = self._token_of(self.store, True)
        if token is None or token != self._token:
            return True
        now = self._clock()
        return any(until < now or is_dead_local(other, self.host) for other, until in self._held.items())

    def sweepable(self) -> bool:
        """Look at who else holds rows (a read); True when some of them can be taken now."""
        token = self.store.change_token(others_only=True)  # before the read: a write after it moves the token again
        held = self.store.leases_elsewhere(self.owner)
        self.looks += 1
        self._token, self._held = token, held
        if held is None:
            return True
        now = self._clock()
        return any(until < now or is_dead_local(other, self.host) for other, until in held.items())

    def swept(self) -> None:
        """A sweep ran (it may have taken rows, a write): look again next round, whatever the token says."""
        self.sweeps += 1
        self._held = None
