"""The SQLite relay queue: inbox rows waiting for delivery to the backend, one queue per order key.

A queue's head is its oldest undelivered row (pending or processing) by arrival; only a pending
head that is due is handed out, so a key never has two deliveries in flight and never overtakes
itself. Everything runs under SQLite's write lock, so two deliverers never get the same row.
"""
from __future__ import annotations

import sqlite3
import time

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Claimed, DeliveryOutcome, RelayRow
from buidl_edge.store.sqlite.binding import bind, unbind
from buidl_edge.store.sqlite.inbox_rows import SqliteInboxRows

# SQLite's documented min() rule: the bare columns come from the row holding the minimum.
_HEADS = """SELECT id, state, next_attempt_at, envelope, deliveries, order_key, error,
                   MIN(received_at)
            FROM inbox WHERE order_key IS NOT NULL AND state IN ('pending', 'processing')
            GROUP BY order_key"""
_TAKE = """UPDATE inbox SET state = 'processing', owner = ?, lease_until = ?, deliveries = deliveries + 1,
                            updated_at = ?
           WHERE id = ? AND state = 'pending'"""
_SETTLE = {
    "sent": "state = 'done', error = NULL",
    "failed": "state = 'failed', error = :error",
    "retry": "state = 'pending', owner = '', next_attempt_at = :retry_at, error = :error",
    "ratelimited": "state = 'pending', owner = '', next_attempt_at = :retry_at, error = :error, "
                   "deliveries = MAX(0, deliveries - 1)",
}


class SqliteRelay(SqliteInboxRows):
    def relay_enqueue(self, envelope_id: str, owner: str, order_key: str, not_before: float | None = None,
                      error: str | None = None) -> bool:
        now = time.time()
        due = now if not_before is None else not_before

        def txn(cur: sqlite3.Cursor) -> bool:
            changes = ("state = 'pending', owner = '', lease_until = NULL, order_key = :key, "
                       "next_attempt_at = :due, error = COALESCE(:error, error), updated_at = :now")
            params = {"key": bind(order_key), "due": due, "error": bind(error), "now": now, "owner": owner}
            return self._update_in_flight(cur, envelope_id, changes, params, " AND owner = :owner",
                                          release=True) == 1

        return self._run(txn, write=True)

    def relay_claim(self, owner: str, limit: int, lease_s: float | None = None) -> Claimed[RelayRow]:
        lease = self.lease_s if lease_s is None else lease_s

        def due_now(cur: sqlite3.Cursor) -> Claimed[RelayRow] | None:
            """The answer when nothing is due, without the write lock (idle deliverers poll often)."""
            now, next_at = time.time(), None
            for _, state, next_attempt_at, *_ in cur.execute(_HEADS):
                if state == "pending" and (next_attempt_at or 0.0) <= now:
                    return None
                if state == "pending":
                    next_at = next_attempt_at if next_at is None else min(next_at, next_attempt_at)
            return Claimed([], next_at)

        idle = self._run(due_now, write=False)
        if idle is not None or limit <= 0:
            return idle or Claimed([], time.time())

        def txn(cur: sqlite3.Cursor) -> Claimed[RelayRow]:
            now = time.time()
            due, next_at = [], None
            for row_id, state, next_attempt_at, text, deliveries, key, error, received_at in cur.execute(_HEADS):
                if state != "pending":
                    continue  # in flight: its key waits for it
                if (next_attempt_at or 0.0) <= now:
                    due.append((received_at, row_id, text, deliveries, key, error))
                else:
                    next_at = next_attempt_at if next_at is None else min(next_at, next_attempt_at)
            due.sort(key=lambda head: head[0])
            if len(due) > limit:
                next_at = now  # more are due than were asked for: come back at once
            rows = []
            for received_at, row_id, text, deliveries, key, error in due[:max(0, limit)]:
                envelope = _envelope(unbind(text))
                if envelope is None:  # never expected: it parsed when it was claimed
                    cur.execute("UPDATE inbox SET state = 'failed', error = 'unreadable envelope', "
                                "updated_at = ? WHERE id = ?", (now, row_id))
                    continue
                cur.execute(_TAKE, (owner, now + lease, now, row_id))
                if cur.rowcount == 1:
                    self._keep_row_id(envelope.envelope_id, row_id)
                    rows.append(RelayRow(envelope, unbind(key), deliveries + 1, received_at, unbind(error)))
            return Claimed(rows, next_at)

        return self._run(txn, write=True)

    def relay_settle(self, envelope_id: str, owner: str, outcome: DeliveryOutcome) -> bool:
        changes = _SETTLE[outcome.kind]
        params = {"error": bind(outcome.error), "retry_at": outcome.retry_at, "now": time.time(), "owner": owner}

        def txn(cur: sqlite3.Cursor) -> bool:
            return self._update_in_flight(cur, envelope_id, f"{changes}, lease_until = NULL, updated_at = :now",
                                          params, " AND owner = :owner", release=True) == 1

        return self._run(txn, write=True)


def _envelope(text: str) -> Envelope | None:
    try:
        frame = protocol.parse_frame(text)
    except protocol.ProtocolError:
        return None
    return frame if isinstance(frame, Envelope) else None
