"""The SQLite inbox: dedup claims, finishing an envelope (with its replies), leases, sweeps, prune.

SQLite's single writer lock is what makes `claim` race-safe across processes: each write
runs in `BEGIN IMMEDIATE`, so the check-and-insert of the dedup key is serialized. A claim makes
one random-key b-tree insert (its key, `Envelope.claim_key`) and appends its inbox row at the end of
the rowid table; rows are found again by rowid (inbox_rows.py).
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import DEFAULT_RETENTION_S, Reply, Swept, reply_key, retention_cutoff
from buidl_edge.store.errors import StoreError
from buidl_edge.store.sqlite.binding import bind, unbind
from buidl_edge.store.sqlite.inbox_rows import SqliteInboxRows
from buidl_edge.store.sqlite.outbox import INSERT_OUTBOX, prune_outbox, reply_row
from buidl_edge.store.sqlite.streams import prune_streams

# Hot-path SQL kept as constants so sqlite3's statement cache reuses the prepared form.
_INSERT_KEY = "INSERT INTO keys(key, envelope_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
# Appended at the rowid table's end. (A row that outlived its pruned key and is claimed again
# leaves the old row beside the new one; lookups take the one in flight, the prune the old.)
_INSERT_INBOX = """INSERT INTO inbox(envelope_id, kind, envelope, state, owner, lease_until,
                                     attempts, received_at, updated_at)
                   VALUES (?, ?, ?, 'processing', ?, ?, 1, ?, ?)"""
_INBOX_HELD = ("SELECT owner, MIN(COALESCE(lease_until, 0)) FROM inbox "
               "WHERE state = 'processing' AND owner != ? GROUP BY owner")
_OUTBOX_HELD = ("SELECT lease_owner, MIN(COALESCE(lease_until, 0)) FROM outbox "
                "WHERE state = 'sending' AND lease_owner != ? GROUP BY lease_owner")
_FINISH = "state = :state, error = :error, lease_until = NULL, updated_at = :now"


class SqliteInbox(SqliteInboxRows):
    # ------------------------------------------------------------ dedup

    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Its dedup key + inbox row in one transaction; False (nothing written) if the key exists."""
        return self._run(self.claim_txn(envelope, owner), write=True)

    def claim_many_now(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError] | None:
        return None  # sqlite3 blocks its caller: only ThreadedStore can say it will not wait

    def claim_many(self, envelopes: Sequence[Envelope], owner: str) -> list[bool | StoreError]:
        return self.run_batch([self.claim_txn(envelope, owner) for envelope in envelopes])

    def claim_txn(self, envelope: Envelope, owner: str) -> Callable[[sqlite3.Cursor], bool]:
        """The claim as a transaction body, for `claim` alone or for `run_batch`."""
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            # Built here, not before: whatever fails in it fails this item inside its savepoint.
            eid = bind(envelope.envelope_id)
            text = envelope.raw_text or json.dumps(envelope.to_dict(), separators=(",", ":"))
            row = (eid, bind(envelope.kind), bind(text), owner, now + self.lease_s, now, now)
            cur.execute(_INSERT_KEY, (bind(envelope.claim_key), eid, now))
            if cur.rowcount != 1:
                return False  # taken: nothing was written
            cur.execute(_INSERT_INBOX, row)
            self._keep_row_id(envelope.envelope_id, cur.lastrowid)
            return True

        return txn

    def claim_key(self, key: str) -> bool:
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute(_INSERT_KEY, (bind(key), "", now))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    # ------------------------------------------------------------ handling

    def finish(self, envelope_id: str, replies: Sequence[Reply], error: str | None = None) -> None:
        self._run(self.finish_txn(envelope_id, replies, error), write=True)

    def finish_txn(self, envelope_id: str, replies: Sequence[Reply],
                   error: str | None = None) -> Callable[[sqlite3.Cursor], None]:
        """Mark done/failed and queue the replies, atomically: no reply without a done row.

        Idempotency keys make a second finish (e.g. after a sweep re-ran it) a no-op
        for replies already queued.
        """
        now = time.time()
        state = "failed" if error else "done"

        def txn(cur: sqlite3.Cursor) -> None:
            rows = [reply_row(envelope_id, r, reply_key(envelope_id, i), now) for i, r in enumerate(replies)]
            self._update_in_flight(cur, envelope_id, _FINISH, {"state": state, "error": bind(error), "now": now},
                                   release=True)
            if rows:
                cur.executemany(INSERT_OUTBOX, rows)

        return txn

    def renew(self, owner: str) -> int:
        """Push out the lease of this owner's in-flight rows so no sweeper steals them."""
        lease_until = time.time() + self.lease_s

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("UPDATE inbox SET lease_until = ? WHERE state = 'processing' AND owner = ?",
                        (lease_until, owner))
            return cur.rowcount

        return self._run(txn, write=True)

    def sweep(self, owner: str, limit: int = 100) -> list[Envelope]:
        """Take over rows whose lease expired or whose same-host owner process is gone.

        Our own rows are never taken (their handler may still be running here).
        Each take-over is conditional on the owner and lease we read, and all of it
        runs under the write lock, so two sweepers never get the same row.
        """

        def txn(cur: sqlite3.Cursor) -> list[Envelope]:
            now = time.time()
            owners = [o for (o,) in cur.execute(
                "SELECT DISTINCT owner FROM inbox WHERE state = 'processing' AND owner != ?", (owner,))]
            dead = [o for o in owners if self._is_dead_local(o)]
            marks = ",".join("?" * len(dead))
            dead_clause = f" OR owner IN ({marks})" if dead else ""
            candidates = cur.execute(
                "SELECT id, owner, lease_until, envelope FROM inbox "
                f"WHERE state = 'processing' AND owner != ? AND (lease_until < ?{dead_clause}) "
                "ORDER BY received_at LIMIT ?", (owner, now, *dead, limit)).fetchall()
            taken: list[Envelope] = []
            lease_until = now + self.lease_s
            for row_id, old_owner, old_lease, text in candidates:
                cur.execute("UPDATE inbox SET owner = ?, lease_until = ?, attempts = attempts + 1, "
                            "updated_at = ? WHERE id = ? AND state = 'processing' "
                            "AND owner = ? AND lease_until IS ?",
                            (owner, lease_until, now, row_id, old_owner, old_lease))
                if cur.rowcount == 1:
                    frame = protocol.parse_frame(unbind(text))
                    if isinstance(frame, Envelope):
                        self._keep_row_id(frame.envelope_id, row_id)
                        taken.append(Swept.of(frame, old_owner))
            return taken

        return self._run(txn, write=True)

    def leases_elsewhere(self, owner: str) -> dict[str, float]:
        """Who else holds rows in flight (inbox rows processing, replies sending), each owner with
        its earliest lease: a read, so that a sweep is run only when it can take something."""

        def read(cur: sqlite3.Cursor) -> dict[str, float]:
            held: dict[str, float] = {}
            for sql in (_INBOX_HELD, _OUTBOX_HELD):
                for other, until in cur.execute(sql, (owner,)):
                    held[other] = min(until, held.get(other, until))
            return held

        return self._run(read, write=False)

    # ---------------------------------------------------------- housekeeping

    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        """Drop handled rows, keys and sent replies older than the retention (floored).

        Keys of rows still processing (or, relayed, pending delivery) are kept whatever their
        age, so a long handler's envelope cannot be claimed a second time.
        """
        cutoff = retention_cutoff(time.time() if now is None else now, retention_s)

        def txn(cur: sqlite3.Cursor) -> int:
            dropped = 0
            cur.execute("DELETE FROM inbox WHERE state IN ('done', 'failed') AND updated_at < ?", (cutoff,))
            dropped += cur.rowcount
            cur.execute("DELETE FROM keys WHERE created_at < ? AND envelope_id NOT IN "
                        "(SELECT envelope_id FROM inbox WHERE state IN ('processing', 'pending'))", (cutoff,))
            dropped += cur.rowcount
            return dropped + prune_outbox(cur, cutoff) + prune_streams(cur, cutoff)

        return self._run(txn, write=True)
