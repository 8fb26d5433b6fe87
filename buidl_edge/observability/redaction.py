"""Redaction: the one rule that logging and Sentry both follow. Nothing that leaves the
process (a log line, a stream write, a Sentry event or breadcrumb) may carry a Slack token, a
Socket Mode ticket, a proxy password or the Sentry DSN key.

Redaction runs on the hub, on text users control (a 40,000-character message in a
handler's exception, a traced frame), so it is linear in the text whatever it holds:
each pattern masks a possessive run that starts right after a fixed-width look-behind,
so no position is tried twice and nothing backtracks (scripts/bench_redact.py).
A log line, and each string of a Sentry event, is cut at MAX_LINE_CHARS, marked as cut.
"""
from __future__ import annotations

import re
import traceback
from typing import Any

# What each pattern matches is the secret alone; the prefix that says what it is stays.
TOKEN_PATTERN = re.compile(r"(?<=xapp-|xox[a-z]-)[A-Za-z0-9-]++")
TICKET_PATTERN = re.compile(r"(?<=ticket=)[^&\s\"'\\]++")
# user[:password] between a URL's "://" and "@": a DSN's key, a proxy's credentials. (Any scheme
# character before "://" will do; a scheme needs a letter, but masking a little more is safe.)
USERINFO_PATTERN = re.compile(r"(?<=[a-zA-Z0-9+.-]://)[^/@\s\"'\\]++(?=@)")
MASK = "[redacted]"
# A log line, or one string of a Sentry event, longer than this is cut (and says so).
MAX_LINE_CHARS = 8192
# Context fields (connection, envelope id) come from frames too: a hostile one stays short.
MAX_FIELD_CHARS = 200
# One part of a traceback (a frame, the exception's own line): a long message cannot push the frames out.
MAX_TRACEBACK_PART_CHARS = 1024

# Secrets known only at run time (the Slack tokens, the DSN key): masked wherever they appear,
# longest first, so a secret that holds another is masked whole.
_extra_secrets: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Mask `value` in everything redacted from now on (too short a value would mask noise)."""
    global _extra_secrets
    if value and len(value) >= 8 and value not in _extra_secrets:
        _extra_secrets = tuple(sorted({*_extra_secrets, value}, key=len, reverse=True))


def register_tokens(*tokens: str | None) -> None:
    """Slack tokens, whole and without their prefix (`xoxb-`): code that strips the prefix
    holds the body alone, and the token pattern would not see it (a local in a Sentry frame)."""
    for token in tokens:
        if token:
            register_secret(token)
            register_secret(token.partition("-")[2])


def redact(text: str) -> str:
    """Mask Slack tokens, Socket Mode tickets, URL credentials and registered secrets, in linear time."""
    if "xapp-" in text or "xox" in text:  # substring checks first: most text holds none
        text = TOKEN_PATTERN.sub(MASK, text)
    if "ticket=" in text:
        text = TICKET_PATTERN.sub(MASK, text)
    if "://" in text:
        text = USERINFO_PATTERN.sub(MASK, text)
    for secret in _extra_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[cut {len(text) - limit} chars]"


def clip_middle(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text` cut to `limit` characters out of its middle: a traceback keeps its start and its end."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}...[cut {len(text) - limit} chars]...{text[len(text) - (limit - head):]}"


def one_line(what: str | BaseException) -> str:
    """Text, or an exception's message, as one line: every run of whitespace (newlines too) one
    space. An exception without a message is named by its type. Errors users see are one line."""
    if isinstance(what, BaseException):
        return " ".join(str(what).split()) or type(what).__name__
    return " ".join(what.split())


def printable(text: str) -> str:
    """What a UTF-8 stream can write: a lone surrogate (from a hostile frame) as its `\\udc00` escape."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def format_exception(exc_info: Any) -> str:
    """A traceback, redacted, with each part (a frame, the exception line) cut on its own."""
    parts = traceback.format_exception(*exc_info)
    return "".join(clip(redact(part), MAX_TRACEBACK_PART_CHARS) for part in parts).rstrip("\n")


def scrub(value: Any, _depth: int = 0, limit: int | None = None) -> Any:
    """`redact` every string inside nested dicts and lists (keys too); other values pass.

    With `limit`, each string is cut to it after redaction (never before: a cut secret
    would escape the masking).
    """
    if isinstance(value, str):
        masked = redact(value)
        return masked if limit is None else clip(masked, limit)
    if _depth > 64:
        return value
    if isinstance(value, dict):
        return {(redact(k) if isinstance(k, str) else k): scrub(v, _depth + 1, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, _depth + 1, limit) for v in value]
    return value

