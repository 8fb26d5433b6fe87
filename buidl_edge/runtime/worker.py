"""One worker process: K connection slots, the dispatcher, the reply sender, signals.

Import it only after `gevent_patch.patch()`, the first step of the `worker` command: this
module and everything it imports open sockets, start threads and take locks.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.lock

from buidl_edge.api.app import EdgeApp
from buidl_edge.api.webclient import client_factory
from buidl_edge.config import OutboxConfig, Settings
from buidl_edge.delivery.loop import DeliveryLoop
from buidl_edge.delivery.outbox import Outbox
from buidl_edge.delivery.streams import StreamSender
from buidl_edge.dispatch.dispatcher import Dispatcher
from buidl_edge.dispatch.handler_threads import HubCall, share_logging_with_threads
from buidl_edge.dispatch.spill import Spill
from buidl_edge.observability.sentry import (
    flush_sentry,
    report_exception,
    report_fatal,
    report_outbox_failure,
)
from buidl_edge.ops.health_events import tell_supervisor, telling_supervisor
from buidl_edge.runtime.chores import Chore, Chores, RoundTokens
from buidl_edge.runtime.exitcodes import EXIT_CRASH, EXIT_FATAL, EXIT_OK
from buidl_edge.runtime.fatal_marker import read_fatal, record_fatal
from buidl_edge.runtime.gc_tuning import settle_heap
from buidl_edge.runtime.hubwatch import HubWatch
from buidl_edge.runtime.liveness import Heartbeat, LeaseRenewal, current_part
from buidl_edge.runtime.predecessors import forget_predecessors
from buidl_edge.runtime.start import cannot_start
from buidl_edge.runtime.sweep_watch import SweepWatch
from buidl_edge.runtime.targets import bolt_target, relay_target, running_what, start_relay
from buidl_edge.socketmode.backoff import backoff_delay
from buidl_edge.socketmode.connection import ConnectionSlot, FatalStop, refresh_overlaps
from buidl_edge.store.base import EdgeStore
from buidl_edge.store.errors import StoreError
from buidl_edge.store.failover import Failover
from buidl_edge.store.finish_journal import FinishJournal
from buidl_edge.store.health import StoreHealth
from buidl_edge.store.memory import MemoryStore
from buidl_edge.store.owners import HEARTBEAT_CHECK_S, RENEWAL_TURN_S
from buidl_edge.store.slots import SlotGate
from buidl_edge.store.spill_files import spill_dir
from buidl_edge.webapi.client import FatalAuthError, SlackApiError, WebApi, sender_webapi

if TYPE_CHECKING:
    from buidl_edge.relay.relay import Relay

log = logging.getLogger("buidl_edge.worker")

# The chores' one timer ticks every second at most; each chore below skips its round (without a store
# call or a thread hop) while it has nothing to do. The renewal cadence is store/owners.py's.
SWEEP_INTERVAL_S = 2.0
DELIVERY_CHORES_S = 2.0
PRUNE_INTERVAL_S = 60.0
AUTH_ATTEMPTS = 5
# Of the drain's time, what handlers still streaming leave for their streams to be stopped.
STREAM_STOP_RESERVE_S = 3.0


@dataclass(frozen=True)
class StopReason:
    """Why the worker stops on its own (not for a signal): the one value its exit comes from."""

    exit_code: int  # EXIT_FATAL: no restart can fix it; EXIT_CRASH: a bug, supervisord restarts it
    reason: str
    connection: str | None = None

    @property
    def fatal(self) -> bool:
        return self.exit_code == EXIT_FATAL


class Worker:
    def __init__(self, settings: Settings, app: EdgeApp, store: EdgeStore | None = None,
                 webapi: WebApi | None = None, outbox_config: OutboxConfig | None = None,
                 bolt_app: Any = None) -> None:
        """`bolt_app`: a slack_bolt App to run instead of `app`'s handlers."""
        self.settings = settings
        self.app = app
        self.bolt_app = bolt_app
        self.store = store or MemoryStore()
        self.webapi = webapi or WebApi(settings.api_url, timeout=settings.http_timeout)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self.stop_requested = gevent.event.Event()
        self.up = False  # past start-up: a failure from here on is a crash, and restarted
        self.stop_reason: StopReason | None = None
        # One view of the store's health for the dispatcher, the outbox and the heartbeat.
        self.health = StoreHealth()
        # The store with this process's fallback and the write-back: every part writes through it.
        journal = (FinishJournal(spill_dir(self.settings.state_dir), self.owner)
                   if self.store.lifespan.outlives_the_process else None)  # a memory store dies with us
        self.failover = Failover(self.store, self.health, self.owner, journal=journal)
        self.slots: list[ConnectionSlot] = []
        self.dispatcher: Dispatcher | None = None
        self.outbox: Outbox | None = None
        self.streams: StreamSender | None = None
        self.relay: Relay | None = None  # relay mode: envelopes go to the HTTP-mode app behind it
        self.outbox_config = outbox_config
        self.hubwatch: HubWatch | None = None
        # App-wide connection slots (BUIDL_MAX_APP_CONNECTIONS), leased from the shared store.
        if telling_supervisor():  # under `run`: the dyno's /readyz hears of episodes at once
            self.health.subscribe(tell_supervisor)
        self.gate = SlotGate(self.store, self.owner, settings.max_app_connections,
                             on_store_error=self.health.failed)
        # What the chores write, each only when it must (runtime/liveness.py, sweep_watch.py).
        # Whether anything changed: one read of the store's change token a round, for every chore.
        self.tokens = RoundTokens()
        self.lease_turn_s = min(RENEWAL_TURN_S, settings.lease_s / 3)
        self.leases = LeaseRenewal(self.store, self.owner, self.lease_turn_s, self.tokens.of)
        self.beat = Heartbeat(self.store, self.owner, self.snapshot, self.current_part, self.health, RENEWAL_TURN_S)
        self.sweeps = SweepWatch(self.store, self.owner, socket.gethostname(), self.tokens.of)
        self.chores: Chores | None = None

    def request_stop(self, signum: int | None = None) -> None:
        """Signal handler: only record; the main greenlet drains."""
        self.stop_requested.set()

    def stop_for(self, stop: StopReason) -> None:
        """Stop on our own. A fatal reason wins over a crash: no restart could fix it."""
        if self.stop_reason is None or stop.fatal or not self.stop_reason.fatal:
            self.stop_reason = stop
        self.stop_requested.set()

    def run(self) -> int:
        """Build, serve until told to stop, drain: the exit code."""
        # First, so that a SIGTERM during start-up drains instead of killing the process.
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.request_stop, sig)
        refused = self._build()
        if refused is not None:
            return refused
        runners = [gevent.spawn(self._run_slot, slot) for slot in self.slots]
        for runner in runners:
            runner.link_exception(self._on_slot_crash)
        forget_predecessors(self.store, self.owner, os.environ.get("SUPERVISOR_PROCESS_NAME", ""))
        self.chores = chores = self._chores().start()
        try:
            http = self._serve_health()
        except OSError as exc:
            return cannot_start(f"cannot listen on BUIDL_HTTP_PORT {self.settings.http_port}: "
                                f"{exc.strerror or exc}", state_dir=self.settings.state_dir)
        share_logging_with_threads()  # the monitor thread and threaded handlers log too
        assert self.dispatcher is not None
        # After start-up (imports, set-up), which would look like blocking to gevent's monitor.
        self.hubwatch = hubwatch = HubWatch(self.settings.hub_block_warn_s, self.dispatcher.describe).start()
        settle_heap()
        self.up = True
        log.info("worker up: %d connection%s, %s", len(self.slots), "" if len(self.slots) == 1 else "s",
                 running_what(self.relay, self.bolt_app, self.app))

        self.stop_requested.wait()

        chores.stop()
        clean = self._drain(runners)
        hubwatch.stop()
        if http is not None:
            http.stop(timeout=1)
        return self._exit(clean)

    def _build(self) -> int | None:
        """The composition root: outbox, relay or handlers, dispatcher, connection slots. An exit
        code when the worker must not start."""
        stopped_for_good = read_fatal(self.settings.state_dir) if os.environ.get("SUPERVISOR_ENABLED") else None
        if stopped_for_good:
            # A sibling already stopped the stack for good; a respawn racing the stop must not call Slack.
            print(f"buidl-edge worker: not starting: {stopped_for_good.get('reason')}", file=sys.stderr, flush=True)
            return EXIT_FATAL
        try:
            bot_user_id = self._resolve_bot_user_id()
        except FatalStop as exc:
            return self._fatal(StopReason(EXIT_FATAL, exc.reason, exc.connection))
        config = self.outbox_config or OutboxConfig.from_env()
        # Its own HTTP pool, sized for the posts it runs at once; on_failed is the Sentry hook.
        self.outbox = Outbox(self.store, sender_webapi(self.settings.api_url, self.settings.http_timeout,
                                                       config.concurrency),
                             self.settings.bot_token, self.owner, config, self.settings.backoff_base,
                             self.settings.backoff_cap, self.settings.lease_s,
                             on_failed=report_outbox_failure, failover=self.failover).start(own_chores=False)
        # ctx.stream's answers, on a delivery loop of their own (their own budgets: ctx.say is not starved).
        self.streams = StreamSender(self.failover, sender_webapi(self.settings.api_url, self.settings.http_timeout, 8),
                                    self.settings.bot_token, self.owner, config.stream_limits,
                                    backoff_base=self.settings.backoff_base,
                                    backoff_cap=self.settings.backoff_cap).start(own_chores=False)
        # send_message may be called from a threaded handler: the outbox is reached on the hub.
        hub_call = HubCall()
        self.app.bind(hub_call.wrap(self.outbox.send_reply))
        # app.client / ctx.client: one WebClient, made (and slack_sdk imported) on first use.
        self.app.bind_client(client_factory(self.settings.api_url, self.settings.bot_token,
                                            self.settings.http_timeout, hub_call), hub_call)
        self.relay = start_relay(self.settings, self.store, self.owner, self.failover)
        self.dispatcher = Dispatcher(self.app, self.store, self.outbox, self.owner,
                                     self.settings.ack_payload_deadline, bot_user_id,
                                     self.settings.handler_concurrency, self.settings.handler_threads,
                                     self.health, target=relay_target(self.relay),
                                     claim_wait_s=self.settings.claim_wait_s, failover=self.failover,
                                     spill=Spill(spill_dir(self.settings.state_dir), self.owner),
                                     make_target=bolt_target(self.bolt_app, self.settings.handler_concurrency),
                                     streams=self.streams)
        overlap = gevent.lock.Semaphore(refresh_overlaps(self.settings))
        self.slots = [ConnectionSlot(f"c{i}", self.settings, self.webapi, self.dispatcher, self.gate, overlap)
                      for i in range(self.settings.connections)]
        return None

    def _chores(self) -> Chores:
        assert self.outbox is not None
        assert self.streams is not None
        loops: list[DeliveryLoop[Any]] = [self.outbox.loop, self.streams.loop]
        if self.relay is not None:
            loops.append(self.relay.loop)
        # In this order: the writes of a renewal turn (heartbeat, slots) before the sweep's look,
        # which their move of the change token would otherwise make again the next round.
        return Chores([Chore("heartbeat", HEARTBEAT_CHECK_S, self.beat.publish_if_due),
                       Chore("heartbeat_refresh", RENEWAL_TURN_S, self.beat.refresh),
                       Chore("renew", self.lease_turn_s, self.leases.renew_if_due),
                       Chore("renew_slots", RENEWAL_TURN_S, self._renew_slots),
                       Chore("sweep", SWEEP_INTERVAL_S, self._sweep),
                       Chore("prune", PRUNE_INTERVAL_S, self._prune),
                       *(Chore(f"{loop.delivery.name}_chores", DELIVERY_CHORES_S,
                               functools.partial(loop.chore_round, self.tokens.of))
                         for loop in loops)], self.health, self.tokens)

    def _exit(self, clean: bool) -> int:
        stop = self.stop_reason
        if stop is not None and stop.fatal:
            return self._fatal(stop)
        flush_sentry()  # what handlers reported while draining goes out before exit
        if stop is not None:
            log.error("%s; exiting for a restart", stop.reason)
            return stop.exit_code
        if clean:
            log.info("worker stopped")
        else:  # what was left is named by the drain's own warnings
            log.warning("worker stopped (drain timed out)")
        return EXIT_OK

    def _run_slot(self, slot: ConnectionSlot) -> None:
        try:
            slot.run()
        except FatalStop as exc:  # expected: said once, in one line, by _fatal
            self.stop_for(StopReason(EXIT_FATAL, exc.reason, exc.connection))

    def _on_slot_crash(self, runner: gevent.Greenlet) -> None:
        # A bug, not a verdict from Slack: exit so that supervisord restarts this process.
        report_exception(runner.exception, report="connection_crash")
        self.stop_for(StopReason(EXIT_CRASH, f"connection crashed: {type(runner.exception).__name__}"))

    def _fatal(self, stop: StopReason) -> int:
        log.error("fatal: %s; not reconnecting", stop.reason)
        report_fatal(stop.reason, stop.connection)
        flush_sentry()
        if os.environ.get("SUPERVISOR_ENABLED"):
            record_fatal(self.settings.state_dir, stop.reason)
        print(f"buidl-edge worker: fatal: {stop.reason}", file=sys.stderr, flush=True)
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
        assert self.dispatcher is not None and self.outbox is not None and self.streams is not None
        acks_done = self.dispatcher.finish_acks(timeout=max(0.1, deadline - time.monotonic()))
        for slot in self.slots:
            slot.close()
        # Handlers still streaming at the end of their time have their streams stopped with what they have.
        reserve = STREAM_STOP_RESERVE_S if self.streams.live else 0.0
        from buidl_edge.store.threaded import ThreadedStore  # (already imported when it is one)

        if isinstance(self.store, ThreadedStore):  # no claim is coming for a finish to ride: write them now
            self.store.finish_promptly()
        handlers_done = self.dispatcher.finish_handlers(timeout=max(0.1, deadline - reserve - time.monotonic()))
        streams_stopped = self.streams.drain(timeout=max(0.1, deadline - time.monotonic()))
        sent = self.outbox.stop(timeout=max(0.1, deadline - time.monotonic()))
        self._forget_heartbeat()
        self.store.close()
        self.dispatcher.close_files()
        return acks_done and handlers_done and streams_stopped and sent

    def _renew_slots(self) -> None:
        lost = set(self.gate.renew())
        for slot in self.slots:
            if slot.name in lost:
                slot.slot_lost()

    def _sweep(self) -> None:
        assert self.dispatcher is not None and self.outbox is not None
        sweep = self.sweeps.due() and self.sweeps.sweepable()
        self.dispatcher.recover(sweep_store=sweep)  # dead workers' journals and spill files: every round
        if sweep:
            self.outbox.recover()
            self.sweeps.swept()

    def _prune(self) -> None:
        dropped = self.store.prune(self.settings.retention_s)
        if dropped:
            log.info("pruned %d old rows", dropped)

    def _forget_heartbeat(self) -> None:
        """A worker that stops takes its row out of `status` (a killed one is judged by its pid)."""
        try:
            self.store.forget_worker(self.owner)
        except StoreError as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)

    def _serve_health(self) -> Any:
        """/healthz /readyz /metrics of this process, when BUIDL_HTTP_PORT is set (under `run`
        supervisord's process serves one endpoint for the whole dyno instead)."""
        if self.settings.http_port is None:
            return None
        from buidl_edge.observability.health import build_app, serve_on_hub

        app = build_app(self.readiness, lambda: [self.snapshot()], self.store.outbox_stats)
        return serve_on_hub(self.settings.http_host, self.settings.http_port, app)

    def readiness(self) -> tuple[bool, str]:
        """Ready: a Slack link is open and the store answers (not degraded)."""
        if not any(slot.stats.connected for slot in self.slots):
            return False, "no Slack link open"
        if self.health.degraded:
            return False, f"degraded, acking with local dedup only: {self.health.cause}"
        return True, f"{sum(slot.stats.connected for slot in self.slots)} of {len(self.slots)} connection(s) open"

    def get_connection_stats(self) -> list[dict[str, Any]]:
        """Per connection, as the Buidl API named them."""
        return [{"name": slot.name, **slot.stats.as_dict()} for slot in self.slots]

    def current_part(self) -> dict[str, Any]:
        """What the heartbeat checks every 2 s: a few figures, not a snapshot (liveness.py)."""
        return current_part(self.slots, self.dispatcher, self.gate, self.health, self.outbox, self.relay)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "process": os.environ.get("SUPERVISOR_PROCESS_NAME", ""),
            "degraded": self.health.degraded,
            "degraded_cause": self.health.cause if self.health.degraded else "",
            "owner": self.owner,
            "started_at": self.started_at,
            "connections": self.get_connection_stats(),
            "dispatch": self.dispatcher.stats_dict() if self.dispatcher else {},
            "outbox": self.outbox.stats.as_dict() if self.outbox else {},
            "streams": self.streams.stats.as_dict() if self.streams else {},
            "slots": self.gate.status(),
            # What the chores did: rounds of their timer, looks at the leases, sweeps run, writes
            # of this heartbeat. Not a change worth a heartbeat by themselves (liveness.py).
            "chores": {"rounds": self.chores.rounds if self.chores else 0, "sweep_looks": self.sweeps.looks,
                       "sweeps": self.sweeps.sweeps, "heartbeats": self.beat.published},
            **({"relay": self.relay.stats_dict()} if self.relay is not None else {}),
        }
