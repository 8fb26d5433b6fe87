"""Logging: one redacting stdout handler for every logger, ours and third-party, one line per
record (logfmt or JSON) tagged with its connection and envelope; and the WEBSOCKET_DEBUG frame
trace. Every record, and every write to stdout/stderr, goes through `redaction.redact`."""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TextIO

from buidl_edge.config import log_options, process_name
from buidl_edge.observability.redaction import (
    MAX_FIELD_CHARS,
    MAX_LINE_CHARS,
    clip,
    clip_middle,
    format_exception,
    printable,
    redact,
)

# -- log context: which connection and envelope a line belongs to ---------------------------

CONTEXT_FIELDS = ("connection", "envelope_id")
# The default is read-only: log_context() always sets a new mapping, never updates the one it got.
_log_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "buidl_log_context", default=MappingProxyType({}))


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Tag every record logged inside the block (this greenlet only) with `fields`.

    A handler's own logs and the third-party libraries it calls then carry the
    envelope id and connection without anyone passing `extra=`.
    """
    merged = {**_log_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _log_context.set(merged)
    try:
        yield
    finally:
        _log_context.reset(token)


class RedactingFilter(logging.Filter):
    """Fill in the log context, then mask secrets in the record itself.

    It sits on the root handler, so it sees every record that reaches stdout,
    ours and third-party (urllib3, websocket, sentry_sdk …) alike.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _log_context.get().items():
            if not getattr(record, key, None):
                setattr(record, key, value)
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format in someone's log call: keep the raw parts
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = format_exception(record.exc_info)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class LogfmtFormatter(logging.Formatter):
    """One line per record, key=value (or JSON), redacted after formatting so nothing escapes."""

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": process_name(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value:
                fields[key] = clip(redact(str(value)), MAX_FIELD_CHARS)
        # Redacted whole before any cut, so a cut can never leave half a secret unmasked.
        message = redact(record.getMessage())
        exc = None
        if record.exc_info or record.exc_text:
            exc = redact(record.exc_text) if record.exc_text else format_exception(record.exc_info)
        budget = MAX_LINE_CHARS
        while True:  # escaping can lengthen the text: halve the budget until the line fits
            line = self._render(fields, clip(message, budget // 2 if exc else budget - 512),
                                None if exc is None else clip_middle(exc, budget // 2))
            if len(line) <= MAX_LINE_CHARS or budget < 1024:
                return printable(redact(line))
            budget //= 2

    def _render(self, fields: dict[str, Any], message: str, exc: str | None) -> str:
        fields = {**fields, "msg": message}
        if exc is not None:
            fields["exc"] = exc.replace("\n", " | ")
        if self.json_lines:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


class RedactingStream:
    """A text stream wrapper that masks secrets in every write (tracebacks, prints, warnings)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @property
    def wrapped(self) -> TextIO:
        return self._stream

    def write(self, text: str) -> int:
        self._stream.write(printable(redact(text)))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def setup_logging(level: str | None = None, json_lines: bool | None = None,
                  redact_streams: bool = True) -> None:
    """Route every logger (ours and third-party) through one redacting stdout handler.

    With `redact_streams`, sys.stdout and sys.stderr are wrapped too, so what a
    process prints outside logging (gevent's crash reports, warnings) is masked
    before supervisord passes it on.
    """
    env_level, env_json = log_options()  # for a process that logs without settings
    level = (level or env_level).upper()
    if level not in logging.getLevelNamesMapping():
        level = "INFO"
    if json_lines is None:
        json_lines = env_json
    if redact_streams:
        if not isinstance(sys.stdout, RedactingStream):
            sys.stdout = RedactingStream(sys.stdout)
        if not isinstance(sys.stderr, RedactingStream):
            sys.stderr = RedactingStream(sys.stderr)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LogfmtFormatter(json_lines=json_lines))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that would print URLs at DEBUG: keep it, but it is redacted anyway.
    logging.getLogger("urllib3").setLevel(max(root.level, logging.INFO))


# -- WEBSOCKET_DEBUG -----------------------------------------------------------------------

frame_log = logging.getLogger("buidl_edge.frames")


def trace_frame(enabled: bool, connection: str, direction: str, text: str) -> None:
    """The WEBSOCKET_DEBUG trace: every frame in and out, redacted; off by default.

    This is the only place message text is logged; Sentry breadcrumbs skip this logger.
    """
    if enabled:
        frame_log.info("%s %s", direction, text, extra={"connection": connection})


