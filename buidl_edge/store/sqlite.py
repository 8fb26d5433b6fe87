"""The shared store on one SQLite file (WAL): dedup keys, inbox, outbox, worker stats.

Every worker process of a dyno opens the same file. SQLite's single writer
lock is what makes `claim` race-safe across processes: each write runs in
`BEGIN IMMEDIATE`, so the check-and-insert of dedup keys is serialized.
WAL with `synchronous=NORMAL` keeps commits cheap (no fsync per commit; a
power loss may drop the last commits, a process crash loses nothing).

sqlite3 blocks the calling thread; in a gevent worker wrap this store in
`ThreadedStore` so the hub keeps running.

Text from Slack is valid JSON but not always valid UTF-8: a lone surrogate escape ("\\udc00")
decodes to a str sqlite3 cannot encode. Such a str is bound as its surrogatepass bytes (a BLOB,
never equal to any TEXT), so every id and key stays one-to-one, and is decoded back on reading.
The file is private (0600, in a 0700 dir when we make it), as is what SQLite adds beside it.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from buidl_edge import protocol
from buidl_edge.protocol import Envelope
from buidl_edge.ratelimit import GLOBAL_KEY, Bucket, PostLimits, channel_key, pause, plan
from buidl_edge.store.base import (DEFAULT_RETENTION_S, MIN_RETENTION_S, Claimed, OutboxRow, PostOutcome,
                                   Reply)
from buidl_edge.statefiles import private_dir, private_file, tighten
from buidl_edge.store.errors import (StoreCorrupt, StoreError, StoreLocked, StoreMissing, StoreUnavailable,
                                     rejected)
from buidl_edge.store.owners import Owner as _Owner, holder_owner, is_dead_local, pid_alive  # noqa: F401

try:  # in a monkey-patched process we still want real OS primitives here:
    from gevent.monkey import get_original  # calls arrive on a native pool thread

    _sleep: Callable[[float], None] = get_original("time", "sleep")
    _new_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
    _start_thread: Callable[..., Any] = get_original("_thread", "start_new_thread")
except ImportError:  # pragma: no cover - gevent is a dependency, but stay importable
    import _thread

    _sleep = time.sleep
    _new_lock = threading.Lock
    _start_thread = _thread.start_new_thread

T = TypeVar("T")

# "database is locked" after busy_timeout: retry a few times, then StoreLocked.
LOCK_ATTEMPTS = 3
LOCK_BACKOFF_S = (0.01, 0.05)

# Checkpoints copy the WAL back into the file and fsync it: by far the most
# expensive step of a write. A background thread does them, so claims only
# append to the WAL; autocheckpoint stays on as a backstop if that thread dies.
WAL_AUTOCHECKPOINT_PAGES = 20_000  # ~80 MB of WAL at 4 KB pages
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# Each entry moves the schema from version i to i + 1. Never edit a shipped
# entry; append a new one. Statements run one by one inside BEGIN IMMEDIATE
# (executescript would commit behind our back).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # WITHOUT ROWID: one b-tree per key instead of two, on the hot path.
        # No created_at index either: only prune scans by age, rarely.
        """CREATE TABLE keys (
               key TEXT PRIMARY KEY,
               envelope_id TEXT NOT NULL,
               created_at REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE inbox (
               envelope_id TEXT PRIMARY KEY,
               kind TEXT NOT NULL,
               envelope TEXT NOT NULL,
               state TEXT NOT NULL,
               owner TEXT NOT NULL,
               lease_until REAL,
               attempts INTEGER NOT NULL DEFAULT 1,
               received_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               error TEXT)""",
        # Partial: only in-flight rows, which is what renew/sweep look at.
        "CREATE INDEX inbox_processing ON inbox(owner, lease_until) WHERE state = 'processing'",
        """CREATE TABLE outbox (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               envelope_id TEXT NOT NULL,
               channel TEXT NOT NULL,
               text TEXT,
               blocks TEXT,
               thread_ts TEXT,
               idempotency_key TEXT NOT NULL UNIQUE,
               state TEXT NOT NULL DEFAULT 'pending',
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at REAL NOT NULL,
               created_at REAL NOT NULL,
               sent_at REAL,
               error TEXT)""",
        "CREATE INDEX outbox_envelope ON outbox(envelope_id)",
        "CREATE INDEX outbox_due ON outbox(state, next_attempt_at)",
        """CREATE TABLE workers (
               owner TEXT PRIMARY KEY,
               pid INTEGER NOT NULL,
               host TEXT NOT NULL,
               updated_at REAL NOT NULL,
               stats TEXT NOT NULL,
               degraded INTEGER NOT NULL DEFAULT 0)""",
    ),
    (
        # The outbox sender (buidl_edge/outbox.py): a lease for rows in flight, Slack's ts,
        # and the token buckets every process spends from.
        "ALTER TABLE outbox ADD COLUMN lease_owner TEXT",
        "ALTER TABLE outbox ADD COLUMN lease_until REAL",
        "ALTER TABLE outbox ADD COLUMN updated_at REAL",
        "ALTER TABLE outbox ADD COLUMN ts TEXT",
        "ALTER TABLE outbox ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX outbox_due",
        # Partial: the unsent rows only, which is all the claim query reads (each channel's head).
        "CREATE INDEX outbox_unsent ON outbox(channel, id) WHERE state IN ('pending', 'sending')",
        "CREATE INDEX outbox_state ON outbox(state, id)",
        """CREATE TABLE post_buckets (
               key TEXT PRIMARY KEY,
               tokens REAL NOT NULL,
               updated_at REAL NOT NULL,
               paused_until REAL NOT NULL DEFAULT 0) WITHOUT ROWID""",
    ),
    (
        # Connection slots (see store/slots.py): one row per open Socket Mode link, leased.
        """CREATE TABLE slots (
               holder TEXT PRIMARY KEY,
               expires_at REAL NOT NULL) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Hot-path SQL kept as constants so sqlite3's statement cache reuses the prepared form.
_INSERT_KEY = "INSERT INTO keys(key, envelope_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
# Upsert: an inbox row can outlive its pruned keys; a genuinely new claim replaces it.
_INSERT_INBOX = """INSERT INTO inbox(envelope_id, kind, envelope, state, owner, lease_until,
                                     attempts, received_at, updated_at)
                   VALUES (?, ?, ?, 'processing', ?, ?, 1, ?, ?)
                   ON CONFLICT(envelope_id) DO UPDATE SET
                     kind = excluded.kind, envelope = excluded.envelope, state = 'processing',
                     owner = excluded.owner, lease_until = excluded.lease_until, attempts = 1,
                     received_at = excluded.received_at, updated_at = excluded.updated_at,
                     error = NULL"""
_FINISH = "UPDATE inbox SET state = ?, error = ?, lease_until = NULL, updated_at = ? WHERE envelope_id = ?"
_INSERT_OUTBOX = """INSERT INTO outbox(envelope_id, channel, text, blocks, thread_ts, idempotency_key,
                                       next_attempt_at, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(idempotency_key) DO NOTHING"""

_OUTBOX_COLS = ("id, channel, text, blocks, thread_ts, idempotency_key, state, attempts, next_attempt_at, "
                "created_at, envelope_id, error, lease_owner, lease_until, sent_at, ts, rate_limited")
# Each channel's oldest unsent row, when it is not already in flight: only it may be sent next.
# A skip-scan over the partial index (channel after channel, then that channel's first id), so
# the cost grows with the channels waiting, not with the rows queued behind them; INDEXED BY
# because the planner would rather scan outbox_state.
_UNSENT = "outbox INDEXED BY outbox_unsent WHERE state IN ('pending', 'sending')"
_OUTBOX_HEADS = f"""WITH RECURSIVE chans(channel) AS (
        SELECT MIN(channel) FROM {_UNSENT}
        UNION ALL
        SELECT (SELECT MIN(channel) FROM {_UNSENT} AND channel > chans.channel)
        FROM chans WHERE chans.channel IS NOT NULL)
    SELECT {', '.join('o.' + c.strip() for c in _OUTBOX_COLS.split(','))}
    FROM chans JOIN outbox AS o ON o.id = (SELECT MIN(id) FROM {_UNSENT} AND channel = chans.channel)
    WHERE o.state = 'pending' ORDER BY o.id"""
_OUTBOX_TAKE = ("UPDATE outbox SET state = 'sending', lease_owner = ?, lease_until = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ? AND state = 'pending'")
_BUCKET_UPSERT = ("INSERT INTO post_buckets(key, tokens, updated_at, paused_until) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at, "
                  "paused_until = excluded.paused_until")

_CORRUPT_HINTS = ("not a database", "malformed", "file is encrypted")
_UNAVAILABLE_HINTS = ("readonly", "read-only", "disk", "full", "i/o", "unable to open")
# sqlite3 errors about one statement's data or use, not about the database: that call alone failed.
_ITEM_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError)
# What SQLite writes beside the database file (WAL mode); it gives them the file's own mode.
_SIDE_FILES = ("-wal", "-shm")


class _Abort(Exception):
    """Raised inside a write to roll it back and return `value` instead."""

    def __init__(self, value: Any) -> None:
        self.value = value


class SqliteStore:
    """`EdgeStore` on a SQLite file, safe to share between processes."""

    durable = True

    def __init__(self, path: str | Path, lease_s: float = 30.0, busy_timeout_s: float = 5.0,
                 host: str | None = None, checkpoint_interval_s: float | None = 0.5,
                 create: bool = True) -> None:
        """`create=False` (admin commands) opens only a store that exists: StoreMissing otherwise,
        and no file or directory is made."""
        self.path = Path(path)
        self.create = create
        self.lease_s = lease_s
        self.busy_timeout_s = busy_timeout_s
        self.host = host or socket.gethostname()
        self._lock = _new_lock()
        self._closed = False
        self._outbox_busy = False  # the last outbox_claim took rows: skip its read-only look next time
        self._conn = self._open()
        self._cur = self._conn.cursor()
        self._stop = _new_lock()
        self._stop.acquire()  # released by close(): wakes and ends the checkpointer
        self._checkpointer_done = _new_lock()
        if checkpoint_interval_s:
            self._checkpointer_done.acquire()
            _start_thread(self._checkpoint_loop, (checkpoint_interval_s,))

    # ---------------------------------------------------------------- open

    def _open(self) -> sqlite3.Connection:
        try:
            if self.create:  # private from the start: created 0600 before sqlite3 opens it
                private_dir(self.path.parent)
                private_file(self.path)
            elif not self.path.is_file():
                raise self._missing()
            for suffix in _SIDE_FILES:  # left wider by an older version
                tighten(Path(f"{self.path}{suffix}"))
            conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            if not self.create and not self.path.is_file():
                raise self._missing() from None
            raise StoreUnavailable(f"cannot open store {self.path}: {_one_line(exc)}") from None
        try:
            self._conn = conn  # _run needs it during setup
            self._cur = conn.cursor()
            self._run(self._setup_pragmas, write=False)
            self._run(self._migrate, write=True)
        except StoreError:  # StoreCorrupt for "file is not a database", via _translate
            conn.close()
            raise
        return conn

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: SQLite itself never creates the file (the checkpointer's connection too).
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, check_same_thread=False,
                               isolation_level=None)

    def _missing(self) -> StoreMissing:
        return StoreMissing(f"no store at {self.path.resolve()}: check that BUIDL_STATE_DIR (or BUIDL_DB) "
                            "names the state the workers use")

    def _setup_pragmas(self, cur: sqlite3.Cursor) -> None:
        cur.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"store {self.path}: cannot enable WAL (journal_mode={mode})")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")

    def _migrate(self, cur: sqlite3.Cursor) -> None:
        # Read inside BEGIN IMMEDIATE so two processes opening at once migrate once.
        version = cur.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema v{version}, newer than this code (v{SCHEMA_VERSION})")
        for target in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[target]:
                cur.execute(statement)
            cur.execute(f"PRAGMA user_version = {target + 1}")

    # ------------------------------------------------------------- plumbing

    def _run(self, fn: Callable[[sqlite3.Cursor], T], write: bool) -> T:
        """Run `fn` (in one IMMEDIATE transaction when writing), retrying a locked DB."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"store {self.path} is closed")
            cur = self._cur
            for attempt in range(LOCK_ATTEMPTS):
                try:
                    if not write:
                        return fn(cur)
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(cur)
                    except _Abort as abort:
                        cur.execute("ROLLBACK")
                        return abort.value  # type: ignore[no-any-return]
                    cur.execute("COMMIT")
                    return result
                except sqlite3.Error as exc:
                    self._rollback_quietly()
                    if _is_locked(exc) and attempt + 1 < LOCK_ATTEMPTS:
                        _sleep(LOCK_BACKOFF_S[min(attempt, len(LOCK_BACKOFF_S) - 1)])
                        continue
                    raise self._translate(exc, fn) from exc
                except StoreError:
                    self._rollback_quietly()
                    raise
                except Exception as exc:  # not sqlite3's: this call failed, the store did not
                    self._rollback_quietly()
                    raise self._rejected(fn, exc) from exc
                except BaseException:
                    self._rollback_quietly()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def run_batch(self, txns: Sequence[Callable[[sqlite3.Cursor], Any]]) -> list[Any]:
        """Group commit: many claims/finishes in one transaction, each in its own savepoint.

        One fsync-bound commit then serves a whole burst, while every item stays atomic
        on its own. An item's result, or its StoreError, comes back in its place: whatever
        an item raises (an unclassified failure is a StoreRejected), only its savepoint is
        rolled back and the rest of the batch commits.
        """
        def batch(cur: sqlite3.Cursor) -> list[Any]:
            results: list[Any] = []
            for txn in txns:
                cur.execute("SAVEPOINT item")
                try:
                    results.append(txn(cur))
                except _Abort as abort:
                    cur.execute("ROLLBACK TO item")
                    results.append(abort.value)
                except sqlite3.Error as exc:
                    if _is_locked(exc):
                        raise  # the whole batch retries
                    cur.execute("ROLLBACK TO item")
                    results.append(self._translate(exc, txn))
                except StoreError as exc:
                    cur.execute("ROLLBACK TO item")
                    results.append(exc)
                except Exception as exc:
                    cur.execute("ROLLBACK TO item")
                    results.append(self._rejected(txn, exc))
                cur.execute("RELEASE item")
            return results

        return self._run(batch, write=True)

    def _rollback_quietly(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _rejected(self, fn: Callable[..., Any], exc: BaseException) -> StoreError:
        return rejected(f"store {self.path} {_operation(fn)}", exc)

    def _translate(self, exc: sqlite3.Error, fn: Callable[..., Any] | None = None) -> StoreError:
        detail = _one_line(exc)
        if isinstance(exc, _ITEM_ERRORS):  # this statement's data, e.g. a value it cannot bind
            return self._rejected(fn or self._translate, exc)
        if _is_locked(exc):
            return StoreLocked(f"store {self.path} stayed locked after {LOCK_ATTEMPTS} tries "
                               f"of {self.busy_timeout_s:g}s: {detail}")
        if _has(exc, _CORRUPT_HINTS):
            return StoreCorrupt(f"store {self.path} is not a usable SQLite database: {detail}")
        if isinstance(exc, sqlite3.OperationalError) and not _has(exc, _UNAVAILABLE_HINTS):
            return StoreError(f"store {self.path}: {detail}")
        return StoreUnavailable(f"store {self.path} unavailable: {detail}")

    # ------------------------------------------------------------ dedup

    def claim(self, envelope: Envelope, owner: str) -> bool:
        """Keys + inbox row in one transaction; False (nothing written) if any key exists."""
        return self._run(self.claim_txn(envelope, owner), write=True)

    def claim_txn(self, envelope: Envelope, owner: str) -> Callable[[sqlite3.Cursor], bool]:
        """The claim as a transaction body, for `claim` alone or for `run_batch`."""
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            # Built here, not before: whatever fails in it fails this item inside its savepoint.
            eid = _b(envelope.envelope_id)
            keys = [(_b(key), eid, now) for key in envelope.dedup_keys]
            text = envelope.raw_text or json.dumps(envelope.to_dict(), separators=(",", ":"))
            row = (eid, _b(envelope.kind), _b(text), owner, now + self.lease_s, now, now)
            cur.executemany(_INSERT_KEY, keys)
            if cur.rowcount != len(keys):
                raise _Abort(False)  # one key was taken: undo any we inserted
            cur.execute(_INSERT_INBOX, row)
            return True

        return txn

    def claim_key(self, key: str) -> bool:
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute(_INSERT_KEY, (_b(key), "", now))
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
            eid = _b(envelope_id)
            rows = [_reply_row(envelope_id, r, f"{envelope_id}:{i}", now) for i, r in enumerate(replies)]
            cur.execute(_FINISH, (state, _b(error), now, eid))
            if rows:
                cur.executemany(_INSERT_OUTBOX, rows)

        return txn

    def mark_replies_sent(self, envelope_id: str) -> int:
        """The worker sent this envelope's replies itself; keep the outbox from resending."""
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("UPDATE outbox SET state = 'sent', sent_at = ? "
                        "WHERE envelope_id = ? AND state != 'sent'", (now, _b(envelope_id)))
            return cur.rowcount

        return self._run(txn, write=True)

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
                "SELECT envelope_id, owner, lease_until, envelope FROM inbox "
                f"WHERE state = 'processing' AND owner != ? AND (lease_until < ?{dead_clause}) "
                "ORDER BY received_at LIMIT ?", (owner, now, *dead, limit)).fetchall()
            taken: list[Envelope] = []
            lease_until = now + self.lease_s
            for envelope_id, old_owner, old_lease, text in candidates:
                cur.execute("UPDATE inbox SET owner = ?, lease_until = ?, attempts = attempts + 1, "
                            "updated_at = ? WHERE envelope_id = ? AND state = 'processing' "
                            "AND owner = ? AND lease_until IS ?",
                            (owner, lease_until, now, envelope_id, old_owner, old_lease))
                if cur.rowcount == 1:
                    frame = protocol.parse_frame(_t(text))
                    if isinstance(frame, Envelope):
                        taken.append(frame)
            return taken

        return self._run(txn, write=True)

    def _is_dead_local(self, owner: str) -> bool:
        return is_dead_local(owner, self.host)

    # ---------------------------------------------------------- housekeeping

    def prune(self, retention_s: float = DEFAULT_RETENTION_S, now: float | None = None) -> int:
        """Drop handled rows, keys and sent replies older than the retention (floored).

        Keys of rows still processing are kept whatever their age, so a long
        handler's envelope cannot be claimed a second time.
        """
        cutoff = (time.time() if now is None else now) - max(retention_s, MIN_RETENTION_S)

        def txn(cur: sqlite3.Cursor) -> int:
            dropped = 0
            cur.execute("DELETE FROM inbox WHERE state IN ('done', 'failed') AND updated_at < ?", (cutoff,))
            dropped += cur.rowcount
            cur.execute("DELETE FROM keys WHERE created_at < ? AND envelope_id NOT IN "
                        "(SELECT envelope_id FROM inbox WHERE state = 'processing')", (cutoff,))
            dropped += cur.rowcount
            cur.execute("DELETE FROM outbox WHERE state = 'sent' AND created_at < ?", (cutoff,))
            dropped += cur.rowcount
            # A bucket untouched this long is full again: the same as no row at all.
            cur.execute("DELETE FROM post_buckets WHERE updated_at < ? AND paused_until < ?", (cutoff, cutoff))
            dropped += cur.rowcount
            return dropped

        return self._run(txn, write=True)

    def heartbeat(self, owner: str, stats: dict[str, Any]) -> None:
        parsed = _Owner.parse(owner)
        row = (owner, parsed.pid or 0, parsed.host, time.time(),
               json.dumps(stats, separators=(",", ":"), default=str), int(bool(stats.get("degraded"))))

        def txn(cur: sqlite3.Cursor) -> None:
            cur.execute("INSERT INTO workers(owner, pid, host, updated_at, stats, degraded) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE SET "
                        "pid = excluded.pid, host = excluded.host, updated_at = excluded.updated_at, "
                        "stats = excluded.stats, degraded = excluded.degraded", row)

        self._run(txn, write=True)

    def forget_worker(self, owner: str) -> None:
        """A worker that stopped cleanly takes its heartbeat out of `status`."""
        self._run(lambda cur: cur.execute("DELETE FROM workers WHERE owner = ?", (owner,)), write=True)

    def workers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Workers that reported, newest first; `max_age_s` hides ones gone quiet."""
        since = -1.0 if max_age_s is None else time.time() - max_age_s

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            rows = cur.execute("SELECT owner, pid, host, updated_at, stats, degraded FROM workers "
                               "WHERE updated_at >= ? ORDER BY updated_at DESC", (since,)).fetchall()
            return [{"owner": o, "pid": p, "host": h, "updated_at": u, "stats": json.loads(s),
                     "degraded": bool(d)} for o, p, h, u, s, d in rows]

        return self._run(read, write=False)

    # ------------------------------------------------------------ connection slots

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        """Lease one of `limit` connection slots to `holder` (renewed if it holds one already).

        Expired leases and those of dead processes on this host are freed first.
        """

        def txn(cur: sqlite3.Cursor) -> bool:
            now = time.time()
            cur.execute("DELETE FROM slots WHERE expires_at < ?", (now,))
            cur.execute("UPDATE slots SET expires_at = ? WHERE holder = ?", (now + ttl, holder))
            if cur.rowcount == 1:
                return True
            held = [h for (h,) in cur.execute("SELECT holder FROM slots")]
            if len(held) >= limit:
                dead = [h for h in held if self._is_dead_local(holder_owner(h))]
                cur.executemany("DELETE FROM slots WHERE holder = ?", [(h,) for h in dead])
                if len(held) - len(dead) >= limit:
                    return False
            cur.execute("INSERT INTO slots(holder, expires_at) VALUES (?, ?)", (holder, now + ttl))
            return True

        return self._run(txn, write=True)

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        """Extend these leases (taking back a lapsed one if there is room); return the ones lost."""

        def txn(cur: sqlite3.Cursor) -> list[str]:
            now = time.time()
            cur.execute("DELETE FROM slots WHERE expires_at < ?", (now,))
            lost = []
            for holder in holders:
                cur.execute("UPDATE slots SET expires_at = ? WHERE holder = ?", (now + ttl, holder))
                if cur.rowcount == 1:
                    continue
                if cur.execute("SELECT COUNT(*) FROM slots").fetchone()[0] < limit:
                    cur.execute("INSERT INTO slots(holder, expires_at) VALUES (?, ?)", (holder, now + ttl))
                else:
                    lost.append(holder)
            return lost

        return self._run(txn, write=True)

    def release_slot(self, holder: str) -> None:
        self._run(lambda cur: cur.execute("DELETE FROM slots WHERE holder = ?", (holder,)), write=True)

    def slots(self) -> list[dict[str, Any]]:
        """Leases held now, for `status`: holder and seconds left."""

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            now = time.time()
            rows = cur.execute("SELECT holder, expires_at FROM slots WHERE expires_at >= ? ORDER BY holder",
                               (now,)).fetchall()
            return [{"holder": h, "expires_in": round(e - now, 3)} for h, e in rows]

        return self._run(read, write=False)

    # ------------------------------------------------------------ admin reads

    def inbox_stats(self) -> dict[str, Any]:
        """Counts for `status`: inbox rows per state, oldest in-flight age, keys, outbox."""

        def read(cur: sqlite3.Cursor) -> dict[str, Any]:
            stats: dict[str, Any] = {"processing": 0, "done": 0, "failed": 0}
            stats.update(cur.execute("SELECT state, COUNT(*) FROM inbox GROUP BY state").fetchall())
            oldest = cur.execute("SELECT MIN(received_at) FROM inbox WHERE state = 'processing'").fetchone()[0]
            stats["oldest_processing_age_s"] = None if oldest is None else max(0.0, time.time() - oldest)
            stats["keys"] = cur.execute("SELECT COUNT(*) FROM keys").fetchone()[0]
            outbox = dict(cur.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            stats["outbox_pending"] = outbox.get("pending", 0)
            stats["outbox_sent"] = outbox.get("sent", 0)
            return stats

        return self._run(read, write=False)

    def inbox_list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent inbox rows, optionally of one state."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            cols = ("envelope_id", "kind", "state", "owner", "attempts", "received_at", "error")
            rows = cur.execute(f"SELECT {', '.join(cols)} FROM inbox {where} "
                               "ORDER BY received_at DESC LIMIT ?", (*args, limit)).fetchall()
            return [_row_dict(cols, row) for row in rows]

        return self._run(read, write=False)

    def retry(self, envelope_id: str) -> bool:
        """Hand a done/failed row back to the sweepers (expired lease, no owner).

        Replies already queued keep their idempotency keys, so a re-run does not
        queue them twice.
        """
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute("UPDATE inbox SET state = 'processing', owner = '', lease_until = 0, "
                        "error = NULL, updated_at = ? WHERE envelope_id = ? "
                        "AND state IN ('done', 'failed')", (now, _b(envelope_id)))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        """One inbox row (tests and `status --envelope`)."""

        def read(cur: sqlite3.Cursor) -> dict[str, Any] | None:
            cur.execute("SELECT envelope_id, kind, state, owner, lease_until, attempts, received_at, "
                        "updated_at, error FROM inbox WHERE envelope_id = ?", (_b(envelope_id),))
            row = cur.fetchone()
            return None if row is None else _row_dict([d[0] for d in cur.description], row)

        return self._run(read, write=False)

    def outbox_rows(self, envelope_id: str) -> list[dict[str, Any]]:
        """Queued replies of one envelope, in order (tests and the outbox sender)."""

        def read(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
            cur.execute("SELECT id, envelope_id, channel, text, blocks, thread_ts, idempotency_key, "
                        "state, attempts FROM outbox WHERE envelope_id = ? ORDER BY id", (_b(envelope_id),))
            names = [d[0] for d in cur.description]
            return [_row_dict(names, row) for row in cur.fetchall()]

        return self._run(read, write=False)

    # ------------------------------------------------------------ outbox

    def outbox_enqueue(self, replies: Sequence[Reply], envelope_id: str = "",
                       keys: Sequence[str] | None = None) -> list[int]:
        """Queue messages sent outside a handler (`send_message`, `buidl-edge send`).

        Without `keys` each row gets a random idempotency key; with them, a key
        already queued is not queued again and its existing row id is returned.
        """
        now = time.time()
        keys = list(keys) if keys is not None else [f"q:{uuid.uuid4().hex}" for _ in replies]
        if len(keys) != len(replies):
            raise ValueError("one idempotency key per reply")

        def txn(cur: sqlite3.Cursor) -> list[int]:
            rows = [_reply_row(envelope_id, r, key, now) for r, key in zip(replies, keys)]
            ids = []
            for row in rows:
                cur.execute(_INSERT_OUTBOX, row)
                ids.append(cur.execute("SELECT id FROM outbox WHERE idempotency_key = ?", (row[5],)).fetchone()[0])
            return ids

        return self._run(txn, write=True)

    def outbox_claim(self, owner: str, limit: int, limits: PostLimits, lease_s: float | None = None) -> Claimed:
        """Take the sendable channel heads (see `ratelimit.plan`) in one write transaction.

        A read-only pass first: when nothing is sendable (the common case while
        a channel waits for its token) no write lock is taken at all.
        """
        lease = self.lease_s if lease_s is None else lease_s
        if limit <= 0:
            return Claimed([], None)

        def decide(cur: sqlite3.Cursor, now: float) -> tuple[list[OutboxRow], dict[str, Bucket], float | None]:
            heads = [_outbox_row(r) for r in cur.execute(_OUTBOX_HEADS).fetchall()]
            if not heads:
                return [], {}, None
            wanted = sorted({channel_key(h.channel) for h in heads} | {GLOBAL_KEY})
            buckets: dict[str, Bucket] = {}
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                for key, tokens, updated, paused in cur.execute(
                        f"SELECT key, tokens, updated_at, paused_until FROM post_buckets "
                        f"WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                    buckets[key] = Bucket(tokens, updated, paused)
            decision = plan(heads, buckets, now, limits, limit)
            return decision.chosen, decision.changed, decision.next_at

        if not self._outbox_busy:  # idle or waiting on tokens: look before taking the write lock
            peek, _, next_at = self._run(lambda cur: decide(cur, time.time()), write=False)
            if not peek:
                return Claimed([], next_at)

        def txn(cur: sqlite3.Cursor) -> Claimed:
            now = time.time()
            chosen, changed, next_at = decide(cur, now)
            taken = []
            for row in chosen:
                cur.execute(_OUTBOX_TAKE, (owner, now + lease, now, row.id))
                if cur.rowcount == 1:
                    taken.append(replace(row, state="sending", attempts=row.attempts + 1, lease_owner=owner,
                                         lease_until=now + lease))
            cur.executemany(_BUCKET_UPSERT, [(k, b.tokens, b.updated, b.paused_until) for k, b in changed.items()])
            return Claimed(taken, next_at)

        claimed = self._run(txn, write=True)
        self._outbox_busy = bool(claimed.rows)
        return claimed

    def outbox_settle(self, row_id: int, owner: str, outcome: PostOutcome) -> OutboxRow | None:
        """Record a post's end, only while the row is still ours and in flight."""

        def txn(cur: sqlite3.Cursor) -> OutboxRow | None:
            now = time.time()
            cur.execute(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                        (row_id, owner))
            found = cur.fetchone()
            if found is None:
                return None
            row = _outbox_row(found)
            if outcome.kind == "sent":
                cur.execute("UPDATE outbox SET state = 'sent', sent_at = ?, ts = ?, lease_until = NULL, "
                            "updated_at = ? WHERE id = ?", (now, outcome.ts, now, row_id))
            elif outcome.kind == "failed":
                cur.execute("UPDATE outbox SET state = 'failed', error = ?, lease_until = NULL, updated_at = ? "
                            "WHERE id = ?", (outcome.error, now, row_id))
            elif outcome.kind == "retry":
                cur.execute("UPDATE outbox SET state = 'pending', error = ?, next_attempt_at = ?, lease_owner = NULL, "
                            "lease_until = NULL, updated_at = ? WHERE id = ?",
                            (outcome.error, outcome.retry_at, now, row_id))
            else:  # ratelimited: not an attempt; pause the bucket Slack said was empty
                cur.execute("UPDATE outbox SET state = 'pending', error = ?, next_attempt_at = ?, "
                            "attempts = MAX(0, attempts - 1), rate_limited = rate_limited + 1, lease_owner = NULL, "
                            "lease_until = NULL, updated_at = ? WHERE id = ?",
                            (outcome.error, outcome.retry_at, now, row_id))
                key = GLOBAL_KEY if outcome.pause == "global" else channel_key(row.channel)
                old = cur.execute("SELECT tokens, updated_at, paused_until FROM post_buckets WHERE key = ?",
                                  (key,)).fetchone()
                paused = pause(Bucket(*old) if old else None, now, outcome.retry_at)
                cur.execute(_BUCKET_UPSERT, (key, paused.tokens, paused.updated, paused.paused_until))
            cur.execute(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE id = ?", (row_id,))
            return _outbox_row(cur.fetchone())

        return self._run(txn, write=True)

    def outbox_renew(self, owner: str, lease_s: float | None = None) -> int:
        lease_until = time.time() + (self.lease_s if lease_s is None else lease_s)

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("UPDATE outbox SET lease_until = ? WHERE state = 'sending' AND lease_owner = ?",
                        (lease_until, owner))
            return cur.rowcount

        return self._run(txn, write=True)

    def outbox_recover(self, owner: str) -> int:
        """Rows left `sending` by a dead process (same host) or past their lease go back to pending.

        Uses the sweep's liveness test. The attempt that was in flight still counts:
        it may have reached Slack (the double-post window README describes).
        """

        def suspects(cur: sqlite3.Cursor) -> list[str]:
            now = time.time()
            rows = cur.execute("SELECT lease_owner, MIN(lease_until) FROM outbox WHERE state = 'sending' "
                               "AND lease_owner != ? GROUP BY lease_owner", (owner,)).fetchall()
            return [o for o, until in rows if (until is not None and until < now) or self._is_dead_local(o)]

        if not self._run(suspects, write=False):
            return 0

        def txn(cur: sqlite3.Cursor) -> int:
            now = time.time()
            dead = [o for o in suspects(cur) if self._is_dead_local(o)]
            marks = ",".join("?" * len(dead))
            dead_clause = f" OR lease_owner IN ({marks})" if dead else ""
            cur.execute("UPDATE outbox SET state = 'pending', error = 'in flight when its sender died', "
                        "next_attempt_at = ?, lease_until = NULL, updated_at = ? "
                        f"WHERE state = 'sending' AND lease_owner != ? AND (lease_until < ?{dead_clause})",
                        (now, now, owner, now, *dead))
            return cur.rowcount

        return self._run(txn, write=True)

    def outbox_stats(self) -> dict[str, Any]:
        def read(cur: sqlite3.Cursor) -> dict[str, Any]:
            now = time.time()
            stats: dict[str, Any] = {"pending": 0, "sending": 0, "sent": 0, "failed": 0}
            stats.update(cur.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            stats["depth"] = stats["pending"] + stats["sending"]
            oldest = cur.execute("SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
            stats["oldest_unsent_age_s"] = None if oldest is None else round(max(0.0, now - oldest), 3)
            stats["rate_limited"] = cur.execute("SELECT COALESCE(SUM(rate_limited), 0) FROM outbox").fetchone()[0]
            stats["channels_waiting"] = cur.execute(
                "SELECT COUNT(DISTINCT channel) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
            stats["paused"] = [{"bucket": k, "for_s": round(p - now, 3)} for k, p in cur.execute(
                "SELECT key, paused_until FROM post_buckets WHERE paused_until > ? ORDER BY key", (now,))]
            return stats

        return self._run(read, write=False)

    def outbox_list(self, state: str | None = None, channel: str | None = None,
                    limit: int = 50) -> list[OutboxRow]:
        clauses, args = [], []
        if state:
            clauses.append("state = ?")
            args.append(state)
        if channel:
            clauses.append("channel = ?")
            args.append(_b(channel))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def read(cur: sqlite3.Cursor) -> list[OutboxRow]:
            rows = cur.execute(f"SELECT {_OUTBOX_COLS} FROM outbox {where} ORDER BY id DESC LIMIT ?",
                               (*args, limit)).fetchall()
            return [_outbox_row(r) for r in rows]

        return self._run(read, write=False)

    def outbox_row(self, row_id: int) -> OutboxRow | None:
        def read(cur: sqlite3.Cursor) -> OutboxRow | None:
            found = cur.execute(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE id = ?", (row_id,)).fetchone()
            return None if found is None else _outbox_row(found)

        return self._run(read, write=False)

    def outbox_retry(self, row_id: int) -> bool:
        now = time.time()

        def txn(cur: sqlite3.Cursor) -> bool:
            cur.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_owner = NULL, "
                        "lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'failed'", (now, now, row_id))
            return cur.rowcount == 1

        return self._run(txn, write=True)

    def outbox_purge(self, state: str = "failed") -> int:
        if state not in ("failed", "sent"):
            raise ValueError(f"only failed or sent rows can be purged, not {state!r}")

        def txn(cur: sqlite3.Cursor) -> int:
            cur.execute("DELETE FROM outbox WHERE state = ?", (state,))
            return cur.rowcount

        return self._run(txn, write=True)

    def _checkpoint_loop(self, interval_s: float) -> None:
        """Native thread, own connection: PASSIVE checkpoints never block writers."""
        try:
            conn = self._connect()
        except sqlite3.Error:
            self._checkpointer_done.release()
            return
        try:
            while not self._stop.acquire(True, interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # busy or failing disk: the write path reports that; try later
        finally:
            conn.close()
            self._checkpointer_done.release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.release()
        # Wait for the checkpointer so no thread touches the file after close().
        self._checkpointer_done.acquire(True, 5.0)
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()


def _b(value: Any) -> Any:
    """A value sqlite3 can bind: a str holding a lone surrogate becomes its surrogatepass bytes.

    Injective: every other str stays TEXT, and SQLite never finds a BLOB equal to a TEXT.
    """
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _t(value: Any) -> Any:
    """What `_b` bound, read back: the str it came from."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _row_dict(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return {name: _t(value) for name, value in zip(names, row)}


def _reply_row(envelope_id: str, reply: Reply, key: str, now: float) -> tuple[Any, ...]:
    return (_b(envelope_id), _b(reply.channel), _b(reply.text), _b(_blocks_json(reply.blocks)),
            _b(reply.thread_ts), _b(key), now, now)


def _operation(fn: Callable[..., Any]) -> str:
    """`claim` for SqliteStore.claim_txn.<locals>.txn: what a failure log line names."""
    parts = getattr(fn, "__qualname__", "").split(".")
    return parts[1].removesuffix("_txn") if len(parts) > 2 and parts[0] == "SqliteStore" else "call"


def _blocks_json(blocks: list[dict[str, Any]] | None) -> str | None:
    return None if blocks is None else json.dumps(blocks, separators=(",", ":"))


def _outbox_row(row: Sequence[Any]) -> OutboxRow:
    (id_, channel, text, blocks, thread_ts, key, state, attempts, next_at, created, envelope_id, error,
     lease_owner, lease_until, sent_at, ts, rate_limited) = map(_t, row)
    return OutboxRow(id_, channel, text, json.loads(blocks) if blocks else None, thread_ts, key, state, attempts,
                     next_at, created, envelope_id, error, lease_owner, lease_until, sent_at, ts, rate_limited or 0)


def _is_locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


def _has(exc: BaseException, hints: tuple[str, ...]) -> bool:
    text = str(exc).lower()
    return any(hint in text for hint in hints)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
