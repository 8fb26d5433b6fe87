"""The SQLite store's connection: open (private, WAL), transactions with bounded lock retries,
group commit, the background checkpointer, and sqlite3 errors as StoreError.

Every topic of the store (inbox, outbox, slots, admin) is a subclass of `SqliteDb` and writes
through `_run`, so one lock, one connection and one error translation serve them all.
"""
from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from buidl_edge.ops.statefiles import private_dir, private_file, tighten
from buidl_edge.store.errors import (
    StoreCorrupt,
    StoreError,
    StoreLocked,
    StoreMissing,
    StoreUnavailable,
    one_line,
    rejected,
)
from buidl_edge.store.owners import is_dead_local
from buidl_edge.store.sqlite.checkpoint import CheckpointCounts, checkpoint_loop
from buidl_edge.store.sqlite.schema import migrate, schema_behind

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
Txn = Callable[[sqlite3.Cursor], Any]

# "database is locked" after busy_timeout: retry a few times, then StoreLocked.
LOCK_ATTEMPTS = 3
LOCK_BACKOFF_S = (0.01, 0.05)

MIGRATION_WAIT_S = 60.0  # how long an open waits for another process migrating the file (_migrate)

# Checkpoints copy the WAL back into the file and fsync it: by far the most
# expensive step of a write. A background thread does them, so claims only
# append to the WAL; autocheckpoint stays on as a backstop if that thread dies.
WAL_AUTOCHECKPOINT_PAGES = 20_000  # ~80 MB of WAL at 4 KB pages
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# A checkpoint copies each page changed since the last one once, however often it changed: a
# longer interval copies (and fsyncs) less for the same writes, at a WAL a few MB longer.
CHECKPOINT_INTERVAL_S = 2.0
# Past this many WAL pages not yet checkpointed, writes go to the store's thread, whose
# connection may run the backstop checkpoint: the hub never does one.
HUB_WAL_BACKLOG_PAGES = 10_000

_CORRUPT_HINTS = ("not a database", "malformed", "file is encrypted")
_UNAVAILABLE_HINTS = ("readonly", "read-only", "disk", "full", "i/o", "unable to open")
# sqlite3 errors about one statement's data or use, not about the database: that call alone failed.
_ITEM_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError)
# What SQLite writes beside the database file (WAL mode); it gives them the file's own mode.
_SIDE_FILES = ("-wal", "-shm")


class Abort(Exception):
    """Raised inside a write to roll it back and return `value` instead."""

    def __init__(self, value: Any) -> None:
        self.value = value


class SqliteDb:
    """One SQLite file, safe to share between processes: the plumbing under every topic."""

    def __init__(self, path: str | Path, lease_s: float = 30.0, busy_timeout_s: float = 5.0,
                 host: str | None = None, checkpoint_interval_s: float | None = CHECKPOINT_INTERVAL_S,
                 create: bool = True, hub_writes: bool = False) -> None:
        """`create=False` (admin commands) opens only a store that exists: StoreMissing otherwise,
        and no file or directory is made. `hub_writes` adds the connection `run_batch_now` uses."""
        self.path = Path(path)
        self.create = create
        self.lease_s = lease_s
        self.busy_timeout_s = busy_timeout_s
        self.host = host or socket.gethostname()
        self._lock = _new_lock()
        self._closed = False
        self._conn = self._open()
        self._cur = self._conn.cursor()
        self._wal_backlog = 0  # pages the checkpointer saw waiting, last time it looked
        self.checkpoints = CheckpointCounts()
        self._hub_lock = _new_lock()
        self._hub: sqlite3.Connection | None = self._connect_hub() if hub_writes else None
        self._hub_cur = self._hub.cursor() if self._hub is not None else None
        self._stop = _new_lock()
        self._stop.acquire()  # released by close(): wakes and ends the checkpointer
        self._checkpointer_done = _new_lock()
        if checkpoint_interval_s:
            self._checkpointer_done.acquire()
            _start_thread(checkpoint_loop, (self, checkpoint_interval_s, WAL_SIZE_LIMIT_BYTES))

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
            raise StoreUnavailable(f"cannot open store {self.path}: {one_line(exc)}") from None
        try:
            self._conn = conn  # _run needs it during setup
            self._cur = conn.cursor()
            self._run(self._setup_pragmas, write=False)
            self._migrate()
        except StoreError:  # StoreCorrupt for "file is not a database", via _translate
            conn.close()
            raise
        return conn

    def _migrate(self) -> None:
        """While the schema is behind, another process may be migrating it, holding the write lock
        as long as copying its inbox takes (200,000 rows: ~5 s): wait for it up to
        MIGRATION_WAIT_S, not the usual lock wait, so this worker still starts."""
        wait_s = MIGRATION_WAIT_S if self._run(schema_behind, write=False) else self.busy_timeout_s
        self._cur.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            self._run(lambda cur: migrate(cur, self.path), write=True)
        finally:
            self._cur.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: SQLite itself never creates the file (the checkpointer's connection too).
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, check_same_thread=False,
                               isolation_level=None)

    def _connect_hub(self) -> sqlite3.Connection:
        """The connection `run_batch_now` writes through on the gevent hub: it never waits for a
        lock (busy timeout 0) and never checkpoints (that is the background thread's job)."""
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=0,
                               check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")  # per connection, like the main one's
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

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

    # ------------------------------------------------------------- transactions

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
                    except Abort as abort:
                        cur.execute("ROLLBACK")
                        return abort.value
                    if cur.connection.in_transaction:  # (a batch of one that failed rolled back)
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

    def run_batch(self, txns: Sequence[Txn]) -> list[Any]:
        """Group commit: many claims/finishes in one transaction, each in its own savepoint.

        One commit then serves a whole burst, while every item stays atomic on its own. An
        item's result, or its StoreError, comes back in its place: whatever an item raises (an
        unclassified failure is a StoreRejected), only its savepoint is rolled back and the rest
        of the batch commits.
        """
        return self._run(self._batch(txns), write=True)

    def run_batch_now(self, txns: Sequence[Txn]) -> list[Any] | None:
        """`run_batch` on the calling thread (the gevent hub), but only when it cannot wait:
        the hub connection is free and no other writer holds the database. None when it would
        have to wait (another process or our own store thread is writing, or the WAL is due for
        a checkpoint): the caller then hands the batch to the store's thread.

        An uncontended write is tens of microseconds; the hand-off to a thread and back costs
        more than that in CPU, which is why the hub tries first.
        """
        cur = self._hub_cur
        if cur is None or self._closed or self._wal_backlog > HUB_WAL_BACKLOG_PAGES:
            return None
        if not self._hub_lock.acquire(False):
            return None
        try:
            if self._closed:
                return None
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if _is_locked(exc):
                    return None
                raise self._translate(exc) from exc
            try:
                results = self._batch(txns)(cur)
                if cur.connection.in_transaction:
                    cur.execute("COMMIT")
                return results
            except sqlite3.Error as exc:
                self._rollback(cur)
                if _is_locked(exc):
                    return None  # nothing was kept: the thread runs the whole batch again
                raise self._translate(exc) from exc
            except BaseException:
                self._rollback(cur)
                raise
        finally:
            self._hub_lock.release()

    def _batch(self, txns: Sequence[Txn]) -> Callable[[sqlite3.Cursor], list[Any]]:
        if len(txns) == 1:  # one item: its own transaction is its savepoint
            return lambda cur: [self._item(txns[0], cur, "ROLLBACK")]

        def batch(cur: sqlite3.Cursor) -> list[Any]:
            # Most batches (a claim and the finish riding it) go through whole: first every item
            # bare, without its SAVEPOINT and RELEASE (two statements an item, ~4 us). Only when
            # one fails is the transaction begun again with each item in its own savepoint.
            try:
                return [txn(cur) for txn in txns]
            except sqlite3.Error as exc:
                if _is_locked(exc):
                    raise  # the whole batch retries, as from a savepoint
            except Exception:  # (Abort among them): run each in its savepoint below
                pass
            cur.execute("ROLLBACK")
            cur.execute("BEGIN IMMEDIATE")  # locked: raised, and the whole batch retries
            results: list[Any] = []
            for txn in txns:
                cur.execute("SAVEPOINT item")
                results.append(self._item(txn, cur, "ROLLBACK TO item"))
                cur.execute("RELEASE item")
            return results

        return batch

    def _item(self, txn: Txn, cur: sqlite3.Cursor, undo: str) -> Any:
        """One item's result, or its StoreError (after `undo` rolled back what it wrote)."""
        try:
            return txn(cur)
        except Abort as abort:
            cur.execute(undo)
            return abort.value
        except sqlite3.Error as exc:
            if _is_locked(exc):
                raise  # the whole batch retries
            cur.execute(undo)
            return self._translate(exc, txn)
        except StoreError as exc:
            cur.execute(undo)
            return exc
        except Exception as exc:
            cur.execute(undo)
            return self._rejected(txn, exc)

    @staticmethod
    def _rollback(cur: sqlite3.Cursor) -> None:
        if cur.connection.in_transaction:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _rollback_quietly(self) -> None:
        self._rollback(self._cur)

    def _rejected(self, fn: Callable[..., Any], exc: BaseException) -> StoreError:
        return rejected(f"store {self.path} {_operation(fn)}", exc)

    def _translate(self, exc: sqlite3.Error, fn: Callable[..., Any] | None = None) -> StoreError:
        detail = one_line(exc)
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

    def _is_dead_local(self, owner: str) -> bool:
        return is_dead_local(owner, self.host)

    def change_token(self, others_only: bool = False) -> tuple[int, ...] | None:
        """What was committed to the file, as a value that differs once anything else is (by any
        process, any connection); None when it cannot tell without waiting. `others_only` leaves
        out what this process commits on the hub (its claims and finishes): what a sweep or a
        look for rows queued elsewhere need not wake up for.

        Read on the hub connection without a lock wait or a thread hop (about 10 µs): SQLite's
        `data_version` counts the commits of every other connection, `total_changes` this one's
        own. A commit that changed nothing moves neither, so idle chores can skip their round.
        """
        cur = self._hub_cur
        if cur is None or self._closed or not self._hub_lock.acquire(False):
            return None
        try:
            if self._closed:
                return None
            version = cur.execute("PRAGMA data_version").fetchone()[0]
            return (version,) if others_only else (version, cur.connection.total_changes)
        except sqlite3.Error:
            return None  # the writes report what is wrong with the file; here it just cannot tell
        finally:
            self._hub_lock.release()

    # ------------------------------------------------------------- lifecycle

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def ping(self) -> bool:
        """A read of the file's header (its schema version): the file is there and is a database."""
        return self._run(lambda cur: cur.execute("PRAGMA user_version").fetchone() is not None, write=False)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.release()
        # Wait for the checkpointer so no thread touches the file after close().
        self._checkpointer_done.acquire(True, 5.0)
        with self._hub_lock:
            if self._hub is not None:
                self._hub.close()
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()


def _operation(fn: Callable[..., Any]) -> str:
    """`claim` for SqliteInbox.claim_txn.<locals>.txn: what a failure log line names."""
    parts = getattr(fn, "__qualname__", "").split(".")
    named = len(parts) > 2 and parts[0].startswith("Sqlite") and parts[1] != "<locals>"
    return parts[1].removesuffix("_txn") if named else "call"


def _is_locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


def _has(exc: BaseException, hints: tuple[str, ...]) -> bool:
    text = str(exc).lower()
    return any(hint in text for hint in hints)
