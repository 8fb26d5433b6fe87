"""Values in and out of SQLite: a lone surrogate (valid JSON from Slack, not UTF-8) is stored as
its surrogatepass bytes and read back as the same str, so ids and keys stay one-to-one."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def bind(value: Any) -> Any:
    """A value sqlite3 can bind: a str holding a lone surrogate becomes its surrogatepass bytes.

    Injective: every other str stays TEXT, and SQLite never finds a BLOB equal to a TEXT.
    """
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def unbind(value: Any) -> Any:
    """What `bind` bound, read back: the str it came from."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def row_dict(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return {name: unbind(value) for name, value in zip(names, row)}
