"""Sentry error reports: one event per failure, every string in it redacted.

Sentry is optional: with SENTRY_DSN unset every `report_*` function is a cheap
no-op, and `sentry_sdk` is never imported. Its options are `config.sentry_options`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from buidl_edge.config import process_name, sentry_options
from buidl_edge.observability.logs import frame_log
from buidl_edge.observability.redaction import MAX_LINE_CHARS, redact, register_secret, scrub

if TYPE_CHECKING:  # sentry_sdk is imported only when a DSN is set
    from sentry_sdk.types import Event, Hint

log = logging.getLogger("buidl_edge.sentry")

_REPORTED_KEEP = 10_000


class _State:
    enabled = False
    reported: ClassVar[OrderedDict[str, None]] = OrderedDict()
    lock = threading.Lock()
    window: ProtocolErrorWindow | None = None


def init_sentry(process: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Start sentry-sdk when SENTRY_DSN is set. Call it after gevent has patched the process.

    Events come only from our explicit `report_*` calls: logging gives breadcrumbs,
    never events, so one failure is one event.
    """
    options = sentry_options(env)
    if options is None:
        return False
    for warning in options.warnings:
        log.warning("%s", warning)
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
    _State.window = ProtocolErrorWindow(options.protocol_window_s, _emit_protocol_errors)
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


def _before_send(event: Event, hint: Hint) -> Event:
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

    error = str(row.get("error") or "unknown")
    channel = str(row.get("channel") or "?")
    tags = {"report": "outbox_failure", "slack_error": error[:200], "channel": channel[:200]}
    if row.get("envelope_id"):
        tags["envelope_id"] = str(row["envelope_id"])
    extras = {k: v for k, v in row.items() if k not in _OUTBOX_PRIVATE}
    sentry_sdk.capture_message(f"reply to {channel} failed for good: {error}", level="error",
                               tags=tags, extras=scrub(extras), fingerprint=["buidl-outbox-failure", error])


def report_relay_failure(envelope: Any, error: str, attempts: int) -> None:
    """An envelope relay mode could not deliver to the app, for good (a 4xx, or out of attempts).
    Its payload stays out of the event: it holds what users wrote."""
    if not _State.enabled:
        return
    import sentry_sdk

    tags = {**envelope_tags(envelope), "report": "relay_failure", "relay_error": error[:200]}
    sentry_sdk.capture_message(f"relay of {str(envelope.kind)[:100]} to the app failed for good: {redact(error)}",
                               level="error", tags=tags, extras={"attempts": attempts},
                               fingerprint=["buidl-relay-failure", error.split(" (")[0][:100]])


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


