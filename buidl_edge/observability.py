"""Logging with secret redaction, and the WEBSOCKET_DEBUG frame trace."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

TOKEN_PATTERN = re.compile(r"\b(xapp|xox[a-z])-[A-Za-z0-9-]+")
TICKET_PATTERN = re.compile(r"(ticket=)[^&\s\"']+")
MASK = "[redacted]"


def redact(text: str) -> str:
    """Mask Slack tokens and Socket Mode tickets wherever they appear in text."""
    text = TOKEN_PATTERN.sub(lambda m: f"{m.group(1)}-{MASK}", text)
    return TICKET_PATTERN.sub(lambda m: f"{m.group(1)}{MASK}", text)


class LogfmtFormatter(logging.Formatter):
    """One line per record, key=value, redacted after formatting so nothing escapes."""

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": os.environ.get("SUPERVISOR_PROCESS_NAME") or f"pid{record.process}",
        }
        for key in ("connection", "envelope_id"):
            value = getattr(record, key, None)
            if value:
                fields[key] = value
        fields["msg"] = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        if self.json_lines:
            line = json.dumps(fields, default=str)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        return redact(line)


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


def setup_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Route every logger (ours and third-party) through one redacting stdout handler."""
    level = level or os.environ.get("BUIDL_LOG_LEVEL", "INFO")
    if json_lines is None:
        json_lines = os.environ.get("BUIDL_LOG_FORMAT", "logfmt").lower() == "json"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LogfmtFormatter(json_lines=json_lines))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would print URLs at DEBUG: keep it, but it is redacted anyway.
    logging.getLogger("urllib3").setLevel(max(root.level, logging.INFO))


frame_log = logging.getLogger("buidl_edge.frames")


def trace_frame(enabled: bool, connection: str, direction: str, text: str) -> None:
    """The WEBSOCKET_DEBUG trace: every frame in and out, redacted; off by default."""
    if enabled:
        frame_log.info("%s %s", direction, text, extra={"connection": connection})
