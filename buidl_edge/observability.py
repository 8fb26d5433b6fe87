"""Logging with secret redaction, the WEBSOCKET_DEBUG frame trace, and Sentry error reports.

They live together because they share one rule: nothing that leaves the
process (a log line, a stream write, a Sentry event or breadcrumb) may carry a
Slack token, a proxy password or the Sentry DSN key. `redact` is that rule;
the log handler, the stdout/stderr wrappers and Sentry's `before_send` /
`before_breadcrumb` all go through it.

Sentry is optional: with SENTRY_DSN unset every `report_*` function is a cheap
no-op, and `sentry_sdk` is never imported.

Redaction runs on the hub, on text users control (a 40,000-character message in a
handler's exception, a traced frame), so it is linear in the text whatever it holds:
each pattern masks a possessive run that starts right after a fixed-width look-behind,
so no position is tried twice and nothing backtracks (scripts/bench_redact.py).
A log line, and each string of a Sentry event, is cut at MAX_LINE_CHARS, marked as cut.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, TextIO

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

log = logging.getLogger("buidl_edge.observability")

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


# -- log context: which connection and envelope a line belongs to ---------------------------

CONTEXT_FIELDS = ("connection", "envelope_id")
_log_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("buidl_log_context", default={})


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


def process_name() -> str:
    """Heroku's dyno and supervisord's program name (web.1/worker_00), else the pid."""
    parts = [os.environ.get("DYNO", ""), os.environ.get("SUPERVISOR_PROCESS_NAME", "")]
    return "/".join(p for p in parts if p) or f"pid{os.getpid()}"


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
    level = (level or os.environ.get("BUIDL_LOG_LEVEL") or "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        level = "INFO"
    if json_lines is None:
        json_lines = os.environ.get("BUIDL_LOG_FORMAT", "logfmt").strip().lower() == "json"
    if redact_streams:
        if not isinstance(sys.stdout, RedactingStream):
            sys.stdout = RedactingStream(sys.stdout)  # type: ignore[assignment]
        if not isinstance(sys.stderr, RedactingStream):
            sys.stderr = RedactingStream(sys.stderr)  # type: ignore[assignment]
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


# -- Sentry ----------------------------------------------------------------------------------

PROTOCOL_WINDOW_S = 60.0
_REPORTED_KEEP = 10_000


@dataclass(frozen=True)
class SentryOptions:
    dsn: str
    environment: str | None
    release: str | None
    sample_rate: float
    include_local_variables: bool


def sentry_options(env: Mapping[str, str] | None = None) -> SentryOptions | None:
    """SENTRY_* (and Heroku's commit variables for the release); None when SENTRY_DSN is unset."""
    env = os.environ if env is None else env
    dsn = (env.get("SENTRY_DSN") or "").strip()
    if not dsn:
        return None
    raw_rate = (env.get("SENTRY_SAMPLE_RATE") or "").strip()
    rate = 1.0
    if raw_rate:
        try:
            rate = float(raw_rate)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            log.warning("SENTRY_SAMPLE_RATE must be a number from 0 to 1; using 1.0")
            rate = 1.0
    release = (env.get("SENTRY_RELEASE") or env.get("HEROKU_SLUG_COMMIT")
               or env.get("SOURCE_VERSION") or "").strip() or None
    return SentryOptions(
        dsn=dsn,
        environment=(env.get("SENTRY_ENVIRONMENT") or "").strip() or None,
        release=release,
        sample_rate=rate,
        include_local_variables=(env.get("SENTRY_INCLUDE_LOCALS") or "").strip().lower() in ("1", "true", "yes", "on"),
    )


class _State:
    enabled = False
    reported: "OrderedDict[str, None]" = OrderedDict()
    lock = threading.Lock()
    window: "ProtocolErrorWindow | None" = None


def sentry_enabled() -> bool:
    return _State.enabled


def init_sentry(process: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Start sentry-sdk when SENTRY_DSN is set. Call it after gevent has patched the process.

    Events come only from our explicit `report_*` calls: logging gives breadcrumbs,
    never events, so one failure is one event.
    """
    options = sentry_options(env)
    if options is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        parsed = Dsn(options.dsn)
    except BadDsn:
        log.error("SENTRY_DSN is not a valid DSN; Sentry stays off")
        return False
    register_secret(parsed.public_key)
    register_secret(parsed.secret_key)
    sentry_sdk.init(
        dsn=options.dsn,
        environment=options.environment,
        release=options.release,
        sample_rate=options.sample_rate,
        send_default_pii=False,
        include_local_variables=options.include_local_variables,
        max_breadcrumbs=50,
        before_send=_before_send,
        before_breadcrumb=_before_breadcrumb,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
        auto_enabling_integrations=False,
        in_app_include=["buidl_edge"],
        shutdown_timeout=2,
    )
    ignore_logger(frame_log.name)  # frames carry message text: never a breadcrumb
    sentry_sdk.get_global_scope().set_tag("process", process or process_name())
    _State.enabled = True
    _State.window = ProtocolErrorWindow(_env_float(env, "BUIDL_SENTRY_PROTOCOL_WINDOW_S", PROTOCOL_WINDOW_S),
                                        _emit_protocol_errors)
    log.info("Sentry on (environment %s, sample rate %s)", options.environment or "production",
             options.sample_rate)
    return True


def flush_sentry(timeout: float = 2.0) -> None:
    """Send what is pending (the protocol-error count too). The drain and fatal paths call it."""
    if not _State.enabled:
        return
    if _State.window is not None:
        _State.window.flush()
    import sentry_sdk

    sentry_sdk.flush(timeout=timeout)


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    return scrub(event, limit=MAX_LINE_CHARS)


def _before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    if crumb.get("category") == frame_log.name:
        return None
    return scrub(crumb, limit=MAX_LINE_CHARS)


def _first_time(key: str, claim: Callable[[str], bool] | None) -> bool:
    """Once per key in this process, and (given the store's `claim`) across processes."""
    with _State.lock:
        if key in _State.reported:
            return False
        _State.reported[key] = None
        while len(_State.reported) > _REPORTED_KEEP:
            _State.reported.popitem(last=False)
    if claim is None:
        return True
    try:
        return bool(claim(key))
    except Exception:  # a failing store must not hide the error it is reporting
        return True


def envelope_tags(envelope: Any, connection: str | None = None) -> dict[str, str]:
    tags = {"envelope_type": str(envelope.type), "envelope_id": str(envelope.envelope_id),
            "retry_attempt": str(envelope.retry_attempt), "event_kind": str(envelope.kind)[:200]}
    if getattr(envelope, "event_id", None):
        tags["slack_event_id"] = str(envelope.event_id)
    if connection:
        tags["connection"] = connection
    return tags


def report_handler_error(exc: BaseException, envelope: Any, handler: str, connection: str | None = None,
                         claim: Callable[[str], bool] | None = None) -> bool:
    """One event per (Slack event, handler): a retry or a re-run of the same event adds none.

    The key is the Slack `event_id` when there is one (Slack's retries carry a new
    envelope id but the same event id), else the envelope id.
    """
    if not _State.enabled:
        return False
    key = f"sentry:handler:{envelope.event_id or envelope.envelope_id}:{handler}"
    if not _first_time(key, claim):
        return False
    import sentry_sdk

    tags = {**envelope_tags(envelope, connection), "report": "handler_error", "handler": handler[:200]}
    sentry_sdk.capture_exception(exc, tags=tags)
    return True


def report_exception(exc: BaseException | None, **tags: str) -> None:
    """Any other exception worth an alert (a crashed connection greenlet), tagged as given."""
    if not _State.enabled or exc is None:
        return
    import sentry_sdk

    sentry_sdk.capture_exception(exc, tags={k: str(v)[:200] for k, v in tags.items()})


def report_fatal(reason: str, connection: str | None = None) -> None:
    """A stop no restart can fix (invalid_auth, link_disabled …)."""
    if not _State.enabled:
        return
    import sentry_sdk

    tags = {"report": "fatal"}
    if connection:
        tags["connection"] = connection
    sentry_sdk.capture_message(f"worker stopped for good: {redact(reason)}", level="fatal", tags=tags,
                               fingerprint=["buidl-fatal", reason.split(":")[0]])


def report_store_failure(operation: str, exc: BaseException) -> None:
    """The shared store failed and the worker went degraded; the caller reports once per episode."""
    if not _State.enabled:
        return
    import sentry_sdk

    sentry_sdk.capture_exception(exc, tags={"report": "store_failure", "store_operation": operation},
                                 fingerprint=["buidl-store-failure", operation])


# Row fields that may hold message content: never sent.
_OUTBOX_PRIVATE = frozenset({"text", "blocks", "payload", "body", "message"})


def report_outbox_failure(row: Any) -> None:
    """An outbox row that failed for good (a permanent Slack error or out of attempts).

    `row` is the outbox row, as a dict or an OutboxRow; its text and blocks stay out of the event.
    """
    if not _State.enabled:
        return
    import sentry_sdk

    if not isinstance(row, Mapping):
        row = row.as_dict() if hasattr(row, "as_dict") else dict(vars(row))

    error = str(row.get("error") or row.get("last_error") or "unknown")
    channel = str(row.get("channel") or "?")
    tags = {"report": "outbox_failure", "slack_error": error[:200], "channel": channel[:200]}
    if row.get("envelope_id"):
        tags["envelope_id"] = str(row["envelope_id"])
    extras = {k: v for k, v in row.items() if k not in _OUTBOX_PRIVATE}
    sentry_sdk.capture_message(f"reply to {channel} failed for good: {error}", level="error",
                               tags=tags, extras=scrub(extras), fingerprint=["buidl-outbox-failure", error])


def report_protocol_error(reason: str, connection: str | None = None) -> None:
    """Count a bad frame; one event per window carries the count, however many arrive."""
    window = _State.window
    if _State.enabled and window is not None:
        window.add(reason, connection)


class ProtocolErrorWindow:
    """Aggregates bad frames: the first opens a window, its end emits one event with the count."""

    def __init__(self, window_s: float, emit: Callable[[dict[str, Any]], None]) -> None:
        self.window_s = window_s
        self.emit = emit
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self.connections: set[str] = set()
        self.started = 0.0
        self._timer: threading.Timer | None = None

    def add(self, reason: str, connection: str | None) -> None:
        with self._lock:
            if self.count == 0:
                self.started = time.monotonic()
                self._timer = threading.Timer(self.window_s, self.flush)
                self._timer.daemon = True
                self._timer.start()
            self.count += 1
            self.reasons[reason] += 1
            if connection:
                self.connections.add(connection)

    def flush(self) -> None:
        with self._lock:
            if self.count == 0:
                return
            summary = {"count": self.count, "reasons": dict(self.reasons),
                       "connections": sorted(self.connections),
                       "seconds": round(time.monotonic() - self.started, 3)}
            timer = self._timer
            self._reset()
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self.emit(summary)


def _emit_protocol_errors(summary: dict[str, Any]) -> None:
    import sentry_sdk

    tags = {"report": "protocol_error", "bad_frames": str(summary["count"])}
    if len(summary["connections"]) == 1:
        tags["connection"] = summary["connections"][0]
    reasons = ", ".join(f"{k} x{v}" for k, v in sorted(summary["reasons"].items()))
    sentry_sdk.capture_message(f"{summary['count']} bad Socket Mode frame(s) in {summary['seconds']:.0f}s ({reasons})",
                               level="error", tags=tags, extras={"protocol_errors": summary},
                               fingerprint=["buidl-protocol-error"])


def _env_float(env: Mapping[str, str] | None, name: str, default: float) -> float:
    raw = (os.environ if env is None else env).get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default
