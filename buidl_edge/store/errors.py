"""Store failures as a few typed exceptions.

The worker catches `StoreError` to switch to degraded mode; the subclasses
let `status`, logs and tests say *why* without parsing sqlite3 messages.
Messages are one line and name the store file, never a secret.
"""
from __future__ import annotations

import logging
from collections import Counter

# Store errors are one line, like config errors (the store modules import one_line from here too).
from buidl_edge.observability.redaction import one_line

log = logging.getLogger("buidl_edge.store")


class StoreError(Exception):
    """Any failure of the shared store."""


class StoreLocked(StoreError):
    """Another process held the database lock past our bounded retries."""


class StoreBusy(StoreError):
    """The store did not answer within the ack path's bound (BUIDL_CLAIM_WAIT_S): a write lock held
    elsewhere, a stalled disk, a server not answering. The call may still land later."""


class StoreUnavailable(StoreError):
    """The store cannot be written: disk full, read-only, I/O error, closed."""


class StoreCorrupt(StoreError):
    """The file is not a usable SQLite database (found at open, or malformed later)."""


class StoreRejected(StoreError):
    """One call (or one item of a group commit) failed in a way the store cannot classify: a bug,
    or data the database cannot take. The store itself still works: only this call failed, so the
    caller carries on for this item without going degraded.

    `first` is True for the first failure of its kind (exception type) in this process: the one
    that was logged, and the one worth an alert.
    """

    def __init__(self, message: str, kind: str, first: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.first = first


class StoreMissing(StoreError):
    """An admin command found no store where the settings point: it never creates one."""


class BadCall(ValueError):
    """A call with arguments no store takes: the caller's mistake, raised as it is (not a StoreError)."""


# Unclassified failures per kind (exception type), this process: the count `status` can show.
rejected_counts: Counter[str] = Counter()


def rejected(where: str, exc: BaseException) -> StoreRejected:
    """Turn a failure no rule classifies into a StoreRejected, counted, logged once per kind at ERROR."""
    kind = type(exc).__name__
    rejected_counts[kind] += 1
    first = rejected_counts[kind] == 1
    detail = one_line(exc)[:300]
    message = f"{where}: unexpected {kind}: {detail}"
    if first:  # with the traceback: an unclassified failure is a bug to find
        log.error("%s (logged once per kind; the worker's stats count them all)", message, exc_info=exc)
    return StoreRejected(message, kind, first)
