"""Store failures as a few typed exceptions.

The worker catches `StoreError` to switch to degraded mode; the subclasses
let `status`, logs and tests say *why* without parsing sqlite3 messages.
Messages are one line and name the store file, never a secret.
"""
from __future__ import annotations


class StoreError(Exception):
    """Any failure of the shared store."""


class StoreLocked(StoreError):
    """Another process held the database lock past our bounded retries."""


class StoreUnavailable(StoreError):
    """The store cannot be written: disk full, read-only, I/O error, closed."""


class StoreCorrupt(StoreError):
    """The file is not a usable SQLite database (found at open, or malformed later)."""
