"""How the commands print: table cells that cannot drive a terminal, ages, counted words, JSON."""
from __future__ import annotations

import json
import re
import time
from typing import Any

import click

# C0/C1 controls (terminal escapes among them) and the bidi overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def cell(value: Any) -> str:
    """A table cell: '-' for no value, control characters escaped (\\x1b, \\n …) so that text from
    Slack or a store cannot drive the operator's terminal."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def ago(timestamp: float | None) -> str | None:
    """Seconds since `timestamp` as 42s / 12m / 5h / 3d."""
    if timestamp is None:
        return None
    seconds = max(0.0, time.time() - timestamp)
    for size, unit in ((86400, "d"), (3600, "h"), (120, "m")):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [{c: cell(row.get(c)) for c in columns} for row in rows]
    widths = {c: max([len(c)] + [len(r[c]) for r in cells]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in cells:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def print_json(value: Any, indent: int | None = 2) -> None:
    """One JSON document on stdout; values JSON has no type for (a Path, a datetime) as text."""
    click.echo(json.dumps(value, indent=indent, default=str))


def print_mapping(values: dict[str, Any]) -> None:
    """`key: value`, a line each, values as table cells ('-' for none); seconds to one decimal."""
    for key, value in values.items():
        click.echo(f"{key}: {cell(round(value, 1) if isinstance(value, float) else value)}")
