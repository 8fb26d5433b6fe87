"""The `worker` command: settings, logging, Sentry, the app and the store, then one `Worker`.

Anything that fails before the worker is up exits EXIT_FATAL with a one-line reason (and the
fatal marker under supervisord): restarting would fail the same way, so `run` stops the stack
instead of crash-looping.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from buidl_edge.api.app import AppError, EdgeApp
from buidl_edge.bolt.loading import load_edge_or_bolt_app
from buidl_edge.config import ConfigError, OutboxConfig, Settings, absolute, default_state_dir, load_settings
from buidl_edge.observability.logs import setup_logging
from buidl_edge.observability.redaction import one_line, register_secret, register_tokens
from buidl_edge.observability.sentry import (
    flush_sentry,
    init_sentry,
    report_exception,
    report_fatal,
    report_store_failure,
)
from buidl_edge.runtime.exitcodes import EXIT_FATAL
from buidl_edge.runtime.fatal_marker import record_fatal
from buidl_edge.store import open_store
from buidl_edge.store.errors import StoreError


def start(**overrides: Any) -> int:
    """The `worker` command: settings from the environment (flags win), then `run_worker`."""
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        return cannot_start(str(exc))
    return run_worker(settings)


def run_worker(settings: Settings) -> int:
    """Start one worker and run it until it stops."""
    from buidl_edge.runtime.worker import Worker

    setup_logging(settings.log_level, settings.log_format == "json")
    register_tokens(settings.app_token.reveal(), settings.bot_token.reveal())  # before anything can log them
    if settings.signing_secret is not None:
        register_secret(settings.signing_secret.reveal())
    init_sentry()  # after gevent's patching (the worker command's first step), before any connection
    try:
        # Relay mode runs no EdgeApp: the HTTP-mode app behind the relay is the handler.
        loaded = EdgeApp("relay") if settings.relay else load_edge_or_bolt_app(settings.app_spec)
        outbox_config = OutboxConfig.from_env()
    except (AppError, ConfigError) as exc:
        return cannot_start(str(exc), getattr(exc, "details", None), settings.state_dir)
    try:
        store = open_store(settings)
    except (StoreError, ConfigError) as exc:
        report_store_failure("open", exc)
        return cannot_start(f"cannot open the store: {exc}", state_dir=settings.state_dir)
    app, bolt_app = (loaded, None) if isinstance(loaded, EdgeApp) else (EdgeApp("bolt"), loaded)
    worker = Worker(settings, app, store=store, outbox_config=outbox_config, bolt_app=bolt_app)
    try:
        return worker.run()
    except Exception as exc:
        if worker.up:
            raise  # a crash: exit 1, and supervisord starts the worker again
        import traceback

        report_exception(exc, report="start_up")
        return cannot_start(f"start-up failed: {type(exc).__name__}: {exc}", traceback.format_exc(),
                            settings.state_dir)


def cannot_start(reason: str, details: str | None = None, state_dir: Any = None) -> int:
    """Say why in one line (after the user's traceback, if any), leave the marker `run` reads."""
    reason = one_line(reason)
    if details:
        sys.stderr.write(details if details.endswith("\n") else details + "\n")
    print(f"buidl-edge worker: cannot start: {reason}", file=sys.stderr, flush=True)
    report_fatal(reason)
    flush_sentry()
    if os.environ.get("SUPERVISOR_ENABLED"):
        if state_dir is None:
            raw = os.environ.get("BUIDL_STATE_DIR")
            state_dir = absolute(raw) if raw else default_state_dir()
        try:
            record_fatal(state_dir, reason)
        except OSError as exc:  # the exit code alone still stops `run`
            print(f"buidl-edge worker: could not record the reason in {state_dir}: {exc.strerror}",
                  file=sys.stderr, flush=True)
    return EXIT_FATAL
