"""One delivery loop: what the outbox, the relay, and any later kind of delivery share.

A kind of delivery (a `Delivery`: posts to chat.postMessage, requests to an HTTP-mode app) says
how to claim its rows from a store, deliver one, settle the outcome in the store and record it.
The loop does the rest, the same way for every kind:

- it claims due rows within a budget: as many as it has free delivery greenlets (its
  concurrency), from the shared store and then from this process's fallback (`stores`);
- it delivers each row on a greenlet of its own;
- it settles each outcome in the store the row came from, tried again after 0.1 s and 0.5 s,
  then kept and tried every chore round: the row stays in flight under this process's lease
  meanwhile, so nobody else takes it;
- it drains on stop: rows in a store that dies with the dyno (memory, the SQLite file on its
  disk) get the drain time to be delivered, rows in one that outlives it (Redis) are left to the
  workers of the other dynos; then the deliveries in flight finish and their outcomes settle;
- it counts every store call that failed and tells StoreHealth (one warning per episode).

A failed delivery is retried with exponential backoff and full jitter (`RetryPolicy`) until its
attempts run out; the store keeps a retried row pending until its `retry_at`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import gevent
import gevent.event
import gevent.pool

from buidl_edge.socketmode.backoff import backoff_delay
from buidl_edge.store.base import Claimed, DeliveryOutcome, EdgeStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover

# Settling an outcome is retried this often before it is kept for the next chore round.
SETTLE_DELAYS_S = (0.0, 0.1, 0.5)
CHORE_INTERVAL_S = 1.0
# The shortest wait for a row due soon: a row due now is claimed on the next turn, not in a busy loop.
MIN_WAIT_S = 0.002

RowT = TypeVar("RowT")
# How a chore reads a store's change token (`store.change_token(others_only)`): a worker's chores
# share one read a round (runtime/chores.py RoundTokens).
TokenReader = Callable[[EdgeStore, bool], Hashable | None]


def read_token_now(store: EdgeStore, others_only: bool) -> Hashable | None:
    return store.change_token(others_only)


class Counters(Protocol):
    """The figures of a kind of delivery that the loop keeps (its stats object has more)."""

    in_flight: int
    store_errors: int


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a row gets, and how long a failed one waits before the next."""

    max_attempts: int
    backoff_base: float
    backoff_cap: float

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt: exponential, full jitter, capped."""
        return backoff_delay(attempts - 1, self.backoff_base, self.backoff_cap)

    def gave_up(self, attempts: int, last_error: str | None) -> DeliveryOutcome | None:
        """Failed without another try when the row's last attempts died with their workers (an
        attempt is counted when its row is claimed); None while it has attempts left."""
        if attempts <= self.max_attempts:
            return None
        return DeliveryOutcome("failed", f"gave up after {attempts - 1} attempts "
                                         f"(last: {last_error or 'lost in flight'})")

    def retry_or_fail(self, error: str | None, attempts: int) -> DeliveryOutcome:
        """A retryable failure of the `attempts`-th attempt: retried after a backoff, or failed
        for good when it was the last."""
        if attempts >= self.max_attempts:
            return DeliveryOutcome("failed", f"{error} (after {attempts} attempts)")
        return DeliveryOutcome("retry", error, time.time() + self.delay(attempts))


@dataclass(frozen=True)
class Delivered:
    """How one delivery went, and what to do once its outcome is settled (or kept to settle later)."""

    outcome: DeliveryOutcome
    then: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Drained:
    """What a stop left behind."""

    in_flight: int = 0  # deliveries still running at the deadline: their rows stay in flight for a sweep
    unsettled: int = 0  # outcomes the store never took: their rows come back when the lease runs out
    left: int = 0  # rows never delivered in a store that dies with the dyno

    @property
    def clean(self) -> bool:
        return not (self.in_flight or self.unsettled or self.left)


@dataclass(frozen=True)
class Quiet:
    """A store's change tokens when a claim last left nothing due there, and when a row will be."""

    token: Hashable
    others: Hashable  # without this process's claims and finishes (store.change_token(others_only=True))
    next_at: float | None


class Delivery(Protocol[RowT]):
    """One kind of delivery, as the loop drives it."""

    name: str  # "outbox", "relay": its failed store calls are reported as "<name>_claim", "<name>_settle"
    log: logging.Logger

    def claim(self, store: EdgeStore, limit: int) -> Claimed[RowT]:
        """At most `limit` due rows of `store`, now in flight under this process's lease."""

    def deliver(self, row: RowT) -> Delivered:
        """Deliver one row; how it went (a failure is an outcome, not an exception)."""

    def settle(self, store: EdgeStore, row: RowT, outcome: DeliveryOutcome) -> Any:
        """Record the outcome in `store`; what `record` is given. StoreError when it cannot."""

    def record(self, row: RowT, outcome: DeliveryOutcome, settled: Any) -> None:
        """Count and log a settled outcome (`settled` also says whether the row was still ours)."""

    def waiting(self, store: EdgeStore) -> int:
        """Rows of `store` not yet delivered: what the drain waits for."""

    def chores(self) -> None:
        """Run every chore round: leases to renew, rows of dead workers to queue again."""


class DeliveryLoop(Generic[RowT]):
    """One per kind of delivery per worker: a claiming greenlet, a pool of delivering ones, chores."""

    def __init__(self, delivery: Delivery[RowT], failover: Failover, counters: Counters, *,
                 concurrency: int, poll_s: float, drain_poll_s: float = 0.05) -> None:
        self.delivery = delivery
        self.failover = failover
        self.store = failover.store
        self.health = failover.health
        self.counters = counters
        self.poll_s = poll_s  # how soon rows queued by another process are noticed
        self.drain_poll_s = drain_poll_s  # how often the drain counts what is left
        # Greenlets of this kind that are not row deliveries (the relay's answers within the ack
        # deadline, late answers): the drain lets them finish too.
        self.companions = gevent.pool.Group()
        self._deliveries = gevent.pool.Pool(concurrency)
        self._wake = gevent.event.Event()
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []
        self._paused_until = 0.0
        self._unsettled: list[Callable[[], None]] = []
        # Per store: its change token when a claim last found nothing more due, and when the
        # next row will be. A poll that finds the token unchanged before then skips the claim
        # (on SQLite, a thread hop and a query four times a second for an idle worker).
        self._quiet: dict[int, Quiet | None] = {}

    # ------------------------------------------------------------ the stores (the failover seam)

    def stores(self) -> tuple[EdgeStore, EdgeStore]:
        """Where rows wait, in the order they are claimed: the shared store, then this process's
        fallback, which holds what was queued while the shared store failed (store/failover.py)."""
        return self.failover.stores()

    # ------------------------------------------------------------ running

    def start(self, own_chores: bool = True) -> None:
        """`own_chores=False`: the caller runs `chore_round` on its own timer (a worker's chores)."""
        self._running = True
        self._greenlets = [gevent.spawn(self._run)] + ([gevent.spawn(self._chores)] if own_chores else [])

    def wake(self) -> None:
        """Claim now (a row was queued, a delivery just finished)."""
        self._wake.set()

    def pause_until(self, until: float) -> bool:
        """Claim nothing before `until` (epoch seconds); True when that holds deliveries longer
        than they already were."""
        if until <= self._paused_until:
            return False
        self._paused_until = until
        return True

    @property
    def paused_until(self) -> float:
        return self._paused_until

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    def stop(self, timeout: float) -> Drained:
        """Drain: deliver what would die with the dyno, stop claiming, let deliveries (and
        companions) in flight finish, settle what is left to settle."""
        if not self._greenlets:  # never started
            return Drained()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.left_with_the_dyno() > 0:
            gevent.sleep(self.drain_poll_s)
        self._running = False
        self._wake.set()
        runner = self._greenlets[0]
        runner.join(timeout=max(0.1, deadline - time.monotonic()))  # a claim in progress ends cleanly
        self._deliveries.join(timeout=max(0.0, deadline - time.monotonic()))
        self.companions.join(timeout=max(0.0, deadline - time.monotonic()))
        self.settle_leftovers()
        gevent.killall(self._greenlets, timeout=1.0)
        return Drained(len(self._deliveries) + len(self.companions), len(self._unsettled), self.left_with_the_dyno())

    def left_with_the_dyno(self) -> int:
        """Rows waiting in the stores whose rows die with this dyno. A store that cannot answer
        counts 0: the drain does not wait on a failing store."""
        total = 0
        for store in self.stores():
            if not store.lifespan.outlives_the_dyno:
                try:
                    total += self.delivery.waiting(store)
                except StoreError:
                    pass
        return total

    def _run(self) -> None:
        woken = True
        while self._running:
            self._wake.clear()
            try:
                next_at = self._fill(woken)
            except Exception:  # a bug here must not silently stop every delivery
                self.delivery.log.exception("%s delivery loop failed; retrying", self.delivery.name)
                next_at = None
            timeout: float | None = self.poll_s
            if self._asleep():  # nothing due until next_at, or until a write (the chores look) or a wake
                timeout = None if next_at is None else max(MIN_WAIT_S, next_at - time.time())
            elif next_at is not None and not self._deliveries.full():
                timeout = min(self.poll_s, max(MIN_WAIT_S, next_at - time.time()))
            woken = bool(self._wake.wait(timeout))

    def _fill(self, woken: bool = True) -> float | None:
        """Claim as many due rows as there are free delivery greenlets; the earliest time another
        may be due. Not `woken` (a poll's timeout), a store unchanged since a claim that left
        nothing due is not asked again before that time."""
        if time.time() < self._paused_until:
            return self._paused_until
        next_at: float | None = None
        for store in self.stores():
            free = self._deliveries.free_count()
            if free <= 0 or not self._running:
                break
            token = store.change_token()
            quiet = self._quiet.get(id(store))
            if (not woken and token is not None and quiet is not None and quiet.token == token
                    and (quiet.next_at is None or time.time() < quiet.next_at)):
                due = quiet.next_at  # nothing written since a claim found nothing more due: nothing is now
            else:
                others = store.change_token(others_only=True)
                try:
                    claimed = self.delivery.claim(store, free)
                except StoreError as exc:
                    self.store_failed(f"{self.delivery.name}_claim", exc)
                    continue
                if store is self.store and claimed.rows:  # rows taken: a write (a read would prove nothing)
                    self.failover.wrote()
                for row in claimed.rows:
                    self._deliveries.spawn(self._deliver, store, row)
                # Fewer than it could take: nothing else was due at `token`.
                done = token is not None and len(claimed.rows) < free
                self._quiet[id(store)] = Quiet(token, others, claimed.next_at) if done else None
                due = claimed.next_at
            if due is not None:
                next_at = due if next_at is None else min(next_at, due)
        return next_at

    # ------------------------------------------------------------ one row

    def _deliver(self, store: EdgeStore, row: RowT) -> None:
        self.counters.in_flight += 1
        try:
            delivered = self.delivery.deliver(row)
        finally:
            self.counters.in_flight -= 1
        self._settle(store, row, delivered.outcome)
        if delivered.then is not None:
            delivered.then()
        self._wake.set()

    def _settle(self, store: EdgeStore, row: RowT, outcome: DeliveryOutcome) -> None:
        delivery = self.delivery
        for delay in SETTLE_DELAYS_S:
            if delay:
                gevent.sleep(delay)
            try:
                settled = delivery.settle(store, row, outcome)
            except StoreError as exc:
                self.store_failed(f"{delivery.name}_settle", exc)
                continue
            delivery.record(row, outcome, settled)
            return
        # Still ours and in flight in the store, under a lease renewed meanwhile: tried each round.
        self.settle_later(lambda: delivery.record(row, outcome, delivery.settle(store, row, outcome)))

    # ------------------------------------------------------------ the store failing

    def settle_later(self, again: Callable[[], None]) -> None:
        """Keep a write the store refused (`again` raises StoreError while it does) for the chores."""
        self._unsettled.append(again)

    def settle_leftovers(self) -> None:
        leftovers, self._unsettled = self._unsettled, []
        for again in leftovers:
            try:
                again()
            except StoreError:
                self._unsettled.append(again)

    def store_failed(self, operation: str, exc: StoreError) -> None:
        """Counted every time; StoreHealth says it once per episode. The call is retried next round."""
        self.counters.store_errors += 1
        self.failover.failed(operation, exc)

    def _asleep(self) -> bool:
        """Every store told, at its last claim, that nothing more was due (and can say when
        anything is written): no poll until a wake, the next due time, or a chore round that
        sees a write."""
        return not self._deliveries.full() and all(
            self._quiet.get(id(store)) is not None for store in self.stores())

    def chore_round(self, token_of: TokenReader = read_token_now) -> None:
        """Settle what the store refused before; the delivery's own chores (lease renewals); and,
        while the loop sleeps, a look for rows another process queued (about 10 µs on SQLite;
        `token_of`: the worker's chores read it once a round for all of them)."""
        self.settle_leftovers()
        self.delivery.chores()
        for store in self.stores():
            quiet = self._quiet.get(id(store))
            # This process's own claims and finishes need no look: what queues rows here wakes the loop.
            if quiet is not None and token_of(store, True) != quiet.others:
                self.wake()
                break

    def _chores(self) -> None:
        while True:
            gevent.sleep(CHORE_INTERVAL_S)
            try:
                self.chore_round()
            except Exception:  # a bug here must not stop the next round
                self.delivery.log.exception("%s chores failed; retrying", self.delivery.name)
