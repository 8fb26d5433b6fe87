"""One worker process: K connection slots, the dispatcher, the reply sender, signals.

Importing this module patches the standard library for gevent, so it must be
imported before anything that opens sockets or starts threads.
"""
from gevent import monkey

monkey.patch_all()

import sys as _sys  # noqa: E402

# sqlite3 runs on a pool thread; a short switch interval keeps the hub from waiting on it.
_sys.setswitchinterval(0.001)

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402

from buidl_edge.app import AppError, EdgeApp, load_app  # noqa: E402
from buidl_edge.config import SLACK_MAX_CONNECTIONS, ConfigError, OutboxConfig, Settings, absolute, default_state_dir  # noqa: E402
from buidl_edge.config import load_settings  # noqa: E402
from buidl_edge.connection import ConnectionSlot, FatalStop, backoff_delay  # noqa: E402
from buidl_edge.dispatch import Dispatcher  # noqa: E402
from buidl_edge.handler_threads import HubCall, share_logging_with_threads  # noqa: E402
from buidl_edge.hubwatch import HubWatch  # noqa: E402
from buidl_edge.logs import setup_logging  # noqa: E402
from buidl_edge.outbox import Outbox  # noqa: E402
from buidl_edge.redaction import register_tokens  # noqa: E402
from buidl_edge.sentry import (  # noqa: E402
    flush_sentry,
    init_sentry,
    report_exception,
    report_fatal,
    report_outbox_failure,
    report_store_failure,
)
from buidl_edge.store.base import EdgeStore  # noqa: E402
from buidl_edge.store import open_store  # noqa: E402
from buidl_edge.store.errors import StoreError  # noqa: E402
from buidl_edge.store.memory import MemoryStore  # noqa: E402
from buidl_edge.store.slots import SlotGate  # noqa: E402
from buidl_edge.supervise import read_fatal, record_fatal  # noqa: E402
from buidl_edge.webapi import FatalAuthError, SlackApiError, WebApi, sender_webapi  # noqa: E402

log = logging.getLogger("buidl_edge.worker")

EXIT_OK = 0
EXIT_CRASH = 1
# A stop that restarting cannot fix (link_disabled, a refused token, and any failure before the
# worker is up: config, app import, store): supervisord must not respawn, `run` stops the stack.
EXIT_FATAL = 3
HEARTBEAT_INTERVAL_S = 2.0
SWEEP_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 60.0
AUTH_ATTEMPTS = 5


class Worker:
    def __init__(self, settings: Settings, app: EdgeApp, store: EdgeStore | None = None,
                 webapi: WebApi | None = None, outbox_config: OutboxConfig | None = None) -> None:
        self.settings = settings
        self.app = app
        self.store = store or MemoryStore()
        self.webapi = webapi or WebApi(settings.api_url, timeout=settings.http_timeout)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self.stop_requested = gevent.event.Event()
        self.up = False  # past start-up: a failure from here on is a crash, and restarted
        self.fatal_reason: str | None = None
        self.fatal_connection: str | None = None
        self.crash_reason: str | None = None
        self.signals_seen = 0
        self.slots: list[ConnectionSlot] = []
        self.dispatcher: Dispatcher | None = None
        self.outbox: Outbox | None = None
        self.outbox_config = outbox_config
        self.hubwatch: HubWatch | None = None
        # App-wide connection slots (BUIDL_MAX_APP_CONNECTIONS), leased from the shared store.
        self.gate = SlotGate(self.store, self.owner, settings.max_app_connections) \
            if hasattr(self.store, "acquire_slot") else None

    def request_stop(self, signum: int | None = None) -> None:
        """Signal handler: only record; the main greenlet drains."""
        self.signals_seen += 1
        self.stop_requested.set()

    def run(self) -> int:
        # First, so that a SIGTERM during start-up drains instead of killing the process.
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.request_stop, sig)
        stopped_for_good = read_fatal(self.settings.state_dir) if os.environ.get("SUPERVISOR_ENABLED") else None
        if stopped_for_good:
            # A sibling already stopped the stack for good; a respawn racing the stop must not call Slack.
            print(f"buidl-edge worker: not starting: {stopped_for_good.get('reason')}", file=sys.stderr, flush=True)
            return EXIT_FATAL
        try:
            bot_user_id = self._resolve_bot_user_id()
        except FatalStop as exc:
            return self._fatal(exc.reason)
        config = self.outbox_config or OutboxConfig.from_env()
        # Its own HTTP pool, sized for the posts it runs at once; on_failed is the Sentry hook.
        self.outbox = Outbox(self.store, sender_webapi(self.settings.api_url, self.settings.http_timeout,
                                                       config.concurrency),
                             self.settings.bot_token, self.owner, config, self.settings.backoff_base,
                             self.settings.backoff_cap, self.settings.lease_s,
                             on_failed=report_outbox_failure).start()
        # send_message may be called from a threaded handler: the outbox is reached on the hub.
        self.app.bind(HubCall().wrap(self.outbox.send_reply))
        self.dispatcher = Dispatcher(self.app, self.store, self.outbox, self.owner,
                                     self.settings.ack_payload_deadline, bot_user_id,
                                     self.settings.handler_concurrency, self.settings.handler_threads)
        overlap = gevent.lock.Semaphore(refresh_overlaps(self.settings))
        self.slots = [ConnectionSlot(f"c{i}", self.settings, self.webapi, self.dispatcher, overlap, self.gate)
                      for i in range(self.settings.connections)]
        runners = [gevent.spawn(self._run_slot, slot) for slot in self.slots]
        for runner in runners:
            runner.link_exception(self._on_slot_crash)
        chores = [gevent.spawn(self._every, HEARTBEAT_INTERVAL_S, self._heartbeat),
                  gevent.spawn(self._every, SWEEP_INTERVAL_S, self._sweep),
                  gevent.spawn(self._every, PRUNE_INTERVAL_S, self._prune),
                  gevent.spawn(self._every, HEARTBEAT_INTERVAL_S, self._renew_slots)]
        try:
            http = self._serve_health()
        except OSError as exc:
            return cannot_start(f"cannot listen on BUIDL_HTTP_PORT {self.settings.http_port}: "
                                f"{exc.strerror or exc}", state_dir=self.settings.state_dir)
        share_logging_with_threads()  # the monitor thread and threaded handlers log too
        # After start-up (imports, set-up), which would look like blocking to gevent's monitor.
        self.hubwatch = hubwatch = HubWatch(self.settings.hub_block_warn_s, self.dispatcher.describe).start()
        self.up = True
        log.info("worker up: %d connection%s, app %s", len(self.slots), "" if len(self.slots) == 1 else "s",
                 self.app.name)
        self.stop_requested.wait()
        gevent.killall(chores, block=False)
        clean = self._drain(runners)
        hubwatch.stop()
        if http is not None:
            http.stop(timeout=1)
        if self.fatal_reason:
            return self._fatal(self.fatal_reason)
        flush_sentry()  # what handlers reported while draining goes out before exit
        if self.crash_reason:
            log.error("%s; exiting for a restart", self.crash_reason)
            return EXIT_CRASH
        if clean:
            log.info("worker stopped")
        else:  # what was left is named by the drain's own warnings
            log.warning("worker stopped (drain timed out)")
        return EXIT_OK

    def _run_slot(self, slot: ConnectionSlot) -> None:
        try:
            slot.run()
        except FatalStop as exc:  # expected: said once, in one line, by _fatal
            self.fatal_reason = exc.reason
            self.fatal_connection = exc.connection
            self.stop_requested.set()

    def _on_slot_crash(self, runner: gevent.Greenlet) -> None:
        # A bug, not a verdict from Slack: exit so that supervisord restarts this process.
        self.crash_reason = f"connection crashed: {type(runner.exception).__name__}"
        report_exception(runner.exception, report="connection_crash")
        self.stop_requested.set()

    def _fatal(self, reason: str) -> int:
        log.error("fatal: %s; not reconnecting", reason)
        report_fatal(reason, self.fatal_connection)
        flush_sentry()
        if os.environ.get("SUPERVISOR_ENABLED"):
            record_fatal(self.settings.state_dir, reason)
        print(f"buidl-edge worker: fatal: {reason}", file=sys.stderr, flush=True)
        return EXIT_FATAL

    def _resolve_bot_user_id(self) -> str | None:
        if self.settings.bot_user_id:
            return self.settings.bot_user_id
        for attempt in range(AUTH_ATTEMPTS):
            try:
                return self.webapi.auth_test(self.settings.bot_token).user_id
            except FatalAuthError as exc:
                raise FatalStop(f"Slack refused the bot token: {exc.error}") from None
            except SlackApiError as exc:
                delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
                log.warning("auth.test failed (%s); retry in %.1fs", exc.error, delay)
                if self.stop_requested.wait(delay):
                    return None
        log.error("auth.test kept failing; mentions by user id are not recognised")
        return None

    def _drain(self, runners: list[gevent.Greenlet]) -> bool:
        """Stop taking envelopes, finish acks, close sockets, finish handlers and replies."""
        deadline = time.monotonic() + self.settings.drain_timeout
        for slot in self.slots:
            slot.stop_dispatching()
        gevent.joinall(runners, timeout=1.0)
        gevent.killall([r for r in runners if not r.dead], block=False)
        assert self.dispatcher is not None and self.outbox is not None
        acks_done = self.dispatcher.inflight.join(timeout=max(0.1, deadline - time.monotonic()))
        for slot in self.slots:
            slot.close()
        handlers_done = self.dispatcher.finish_handlers(timeout=max(0.1, deadline - time.monotonic()))
        sent = self.outbox.stop(timeout=max(0.1, deadline - time.monotonic()))
        self._forget_heartbeat()
        self.store.close()
        return bool(acks_done) and bool(handlers_done) and bool(sent)

    def _every(self, interval: float, chore: Any) -> None:
        while True:
            try:
                chore()
            except StoreError as exc:  # chores are retried next round; acking goes on
                log.warning("%s failed: %s", chore.__name__.strip("_"), exc)
            gevent.sleep(interval)

    def _heartbeat(self) -> None:
        self.store.renew(self.owner)
        if self.dispatcher is not None:  # with no traffic, this is what ends a degraded episode
            self.dispatcher.store_ok()
        self._publish_stats()

    def _renew_slots(self) -> None:
        if self.gate is None:
            return
        lost = set(self.gate.renew())
        for slot in self.slots:
            if slot.name in lost:
                slot.slot_lost()

    def _sweep(self) -> None:
        assert self.dispatcher is not None
        for envelope in self.store.sweep(self.owner):
            self.dispatcher.rerun(envelope)

    def _prune(self) -> None:
        dropped = self.store.prune(self.settings.retention_s)
        if dropped:
            log.info("pruned %d old rows", dropped)

    def _publish_stats(self) -> None:
        try:
            self.store.heartbeat(self.owner, self.snapshot())
        except StoreError as exc:  # stats are best effort; acking goes on
            log.warning("heartbeat failed: %s", exc)

    def _forget_heartbeat(self) -> None:
        """A worker that stops takes its row out of `status` (a killed one is judged by its pid)."""
        try:
            self.store.forget_worker(self.owner)
        except StoreError as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)

    def _serve_health(self) -> Any:
        """/healthz /readyz /metrics of this process, when BUIDL_HTTP_PORT is set (under `run`
        the parent serves one endpoint for the whole dyno instead)."""
        if self.settings.http_port is None:
            return None
        from buidl_edge.health import build_app, serve_on_hub

        app = build_app(self.readiness, lambda: [self.snapshot()], self.store.outbox_stats)
        return serve_on_hub(self.settings.http_host, self.settings.http_port, app)

    def readiness(self) -> tuple[bool, str]:
        """Ready: a Slack link is open and the store answers (not degraded)."""
        if not any(slot.stats.connected for slot in self.slots):
            return False, "no Slack link open"
        if self.dispatcher is not None and self.dispatcher.stats.degraded:
            return False, "the store is failing (degraded: acking with local dedup only)"
        return True, f"{sum(slot.stats.connected for slot in self.slots)} of {len(self.slots)} connection(s) open"

    def get_connection_stats(self) -> list[dict[str, Any]]:
        """Per connection, as the Buidl API named them."""
        return [{"name": slot.name, **slot.stats.as_dict()} for slot in self.slots]

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "process": os.environ.get("SUPERVISOR_PROCESS_NAME", ""),
            "degraded": bool(self.dispatcher and self.dispatcher.stats.degraded),
            "owner": self.owner,
            "started_at": self.started_at,
            "connections": self.get_connection_stats(),
            "dispatch": self.dispatcher.stats_dict() if self.dispatcher else {},
            "outbox": self.outbox.stats.as_dict() if self.outbox else {},
            "slots": self.gate.status() if self.gate else {},
        }


def refresh_overlaps(settings: Settings) -> int:
    """How many extra links this process may hold while its connections refresh.

    Slack's 10 per app, less P x K steady links, shared by the P processes; at least one,
    which `run` guarantees by refusing P x K + P > 10. Not capped at K: when Slack warns a
    replacement link while its predecessor is still closing, a connection briefly needs two.
    """
    spare = SLACK_MAX_CONNECTIONS - settings.processes * settings.connections
    return max(1, spare // settings.processes)


def start(**overrides: Any) -> int:
    """The `worker` command: settings from the environment (flags win), then `run_worker`."""
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        return cannot_start(str(exc))
    return run_worker(settings)


def run_worker(settings: Settings) -> int:
    """Start one worker and run it until it stops. Anything that fails before the worker is up
    exits EXIT_FATAL with a one-line reason (and the fatal marker under supervisord): restarting
    would fail the same way, so `run` stops the stack instead of crash-looping."""
    setup_logging(settings.log_level, settings.log_format == "json")
    register_tokens(settings.app_token.reveal(), settings.bot_token.reveal())  # before anything can log them
    init_sentry()  # after gevent's patching (this module's first lines), before any connection
    try:
        app = load_app(settings.app_spec)
        outbox_config = OutboxConfig.from_env()
    except (AppError, ConfigError) as exc:
        return cannot_start(str(exc), getattr(exc, "details", None), settings.state_dir)
    try:
        store = open_store(settings)
    except (StoreError, ConfigError) as exc:
        report_store_failure("open", exc)
        return cannot_start(f"cannot open the store: {exc}", state_dir=settings.state_dir)
    worker = Worker(settings, app, store=store, outbox_config=outbox_config)
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
    reason = " ".join(reason.split())
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
