"""Helpers that several test modules share: defined once here, imported where needed.

Fixtures live in conftest.py; the whole stack is stack_support.py, a redis-server redis_support.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from buidl_edge.config import load_settings
from buidl_edge.sandbox.harness import WorkerProcess, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import OutboxRow
from buidl_edge.store.errors import StoreError, StoreMissing
from buidl_edge.store.owners import HEARTBEAT_CHECK_S, STALE_AFTER_S

HOST = socket.gethostname()
# The owner name this test process would have as a worker (host:pid).
ME = f"{HOST}:{os.getpid()}"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): an owner nobody is any more."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def envelope(envelope_id: str, event_id: str | None = None, text: str = "hi") -> Envelope:
    """An events_api message envelope; with `event_id`, the second dedup key too."""
    payload: dict[str, Any] = {"event": {"type": "message", "text": text}}
    if event_id:
        payload["event_id"] = event_id
    return Envelope(type="events_api", envelope_id=envelope_id, payload=payload)


# ---------------------------------------------------------------- secrets


def secret_fragments(secrets: Mapping[str, str] | Iterable[str]) -> list[str]:
    """What a partial leak would show of each secret (a mapping's values): the whole, the body
    without its `xapp-` style prefix, and the longest part between dashes."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    out: list[str] = []
    for secret in values:
        out += [secret, secret.split("-", 1)[-1], max(secret.split("-"), key=len)]
    return out


def assert_no_secret(text: str, secrets: Mapping[str, str] | Iterable[str], where: str = "the output") -> None:
    for fragment in secret_fragments(secrets):
        assert fragment not in text, f"a secret fragment leaked into {where}"


def tokens_in(env: Mapping[str, str]) -> dict[str, str]:
    """The Slack tokens an environment carries (none in an operator's shell)."""
    return {name: env[name] for name in ("SLACK_APP_TOKEN", "SLACK_BOT_TOKEN") if env.get(name)}


# ---------------------------------------------------------------- worker processes


def app_folder(factory: pytest.TempPathFactory, module: str, source: str) -> Path:
    """A temp folder holding a test app as `module`.py, to put on the workers' path."""
    folder = factory.mktemp(module.replace("_", "-"))
    (folder / f"{module}.py").write_text(source)
    return folder



class Workers:
    """Worker processes aimed at one simulator, sharing a state dir (so one SQLite store unless
    told otherwise), a test app's folder on their path; their logs are printed at teardown."""

    def __init__(self, sim: SimulatorProcess, tmp_path: Path, app_dir: Path | None = None, **defaults: Any) -> None:
        self.sim = sim
        self.client: SimulatorClient = sim.client
        self.tmp_path = tmp_path
        self.app_dir = app_dir
        self.state_dir = tmp_path / "state"
        self.defaults = defaults
        self.started: list[WorkerProcess] = []

    def env(self, **extra: Any) -> dict[str, str]:
        env = worker_env(self.sim.api_url, **{"BUIDL_STATE_DIR": self.state_dir, **self.defaults, **extra})
        if self.app_dir is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.app_dir), env.get("PYTHONPATH")]))
        return env

    def spawn(self, args: tuple[str, ...] = (), **extra: Any) -> WorkerProcess:
        """Start one worker; do not wait for it."""
        worker = WorkerProcess(self.env(**extra), args=args,
                               log_path=self.tmp_path / f"worker-{len(self.started)}.log")
        worker.start()
        self.started.append(worker)
        return worker

    def start(self, app: str | None = None, connections: int = 1, wait_connected: bool = True,
              args: tuple[str, ...] = (), **extra: Any) -> WorkerProcess:
        """Start one worker (`app`: its BUIDL_APP) with `connections` links; wait until the links of
        every live worker are open."""
        [worker] = self.start_many(1, app, connections, wait_connected, args, **extra)
        return worker

    def start_many(self, count: int, app: str | None = None, connections: int = 1, wait_connected: bool = True,
                   args: tuple[str, ...] = (), **extra: Any) -> list[WorkerProcess]:
        if app:
            extra["BUIDL_APP"] = app
        opened = self.client.summary()["connections_opened"]
        workers = [self.spawn(args, BUIDL_CONNECTIONS=connections, **extra) for _ in range(count)]
        if wait_connected:
            expected = sum(int(w.env.get("BUIDL_CONNECTIONS", 1)) for w in self.started
                           if w.proc and w.proc.poll() is None)
            self.client.wait_for(lambda s: s["connections_opened"] >= opened + count * connections
                                 and s["open_connections"] == expected, 15,
                                 f"{expected} worker connection(s), {count * connections} of them new")
        return workers

    def output(self) -> str:
        return "\n".join(w.output() for w in self.started)

    def wait_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """`wait_idle` over every worker started here."""
        return wait_idle(self.client, *self.started, timeout=timeout)

    def stop_all(self) -> None:
        for worker in self.started:  # all at once: each drains on its own
            if worker.proc and worker.proc.poll() is None:
                worker.signal(signal.SIGTERM)
        for worker in self.started:
            code = worker.stop()
            print(f"--- {worker.log_path.name} exit {code} ---\n{worker.output()}")


@contextlib.contextmanager
def linked_worker(sim: SimulatorProcess, env: Mapping[str, str]) -> Iterator[WorkerProcess]:
    """One worker with its link open for the `with` block; stopped after it, its log's tail printed."""
    worker = WorkerProcess(env).start()
    try:
        sim.client.wait_for(lambda s: s["open_connections"] >= 1, 20, "the worker's link")
        yield worker
    finally:
        worker.stop()
        print(f"----- {worker.log_path}\n{worker.output()[-8000:]}")


def relay_env(sim: SimulatorProcess, url: str, secret: str, state_dir: Path, **extra: Any) -> dict[str, str]:
    """A relaying worker's environment (BUIDL_RELAY_URL, the signing secret), with quick retries and
    a quick stale check."""
    return worker_env(sim.api_url, BUIDL_RELAY_URL=url, SLACK_SIGNING_SECRET=secret, BUIDL_STATE_DIR=str(state_dir),
                      BUIDL_RELAY_BACKOFF_BASE="0.2", BUIDL_RELAY_BACKOFF_CAP="1", BUIDL_PING_INTERVAL="1",
                      BUIDL_STALE_TIMEOUT="3", **extra)


# ---------------------------------------------------------------- what the simulator and workers saw


def keys(injected: list[dict[str, str]]) -> list[str]:
    """The event keys of what `inject` returned."""
    return [e["key"] for e in injected]


def wait_acked(sim: SimulatorClient, wanted: list[str], timeout: float = 10) -> dict[str, Any]:
    return sim.wait_for(lambda s: all(s["events"].get(k, {}).get("acked") for k in wanted), timeout,
                        f"{len(wanted)} event(s) acked", source="state")


def log_lines(worker: WorkerProcess, pattern: str) -> list[str]:
    return [line for line in worker.output().splitlines() if re.search(pattern, line)]


# ---------------------------------------------------------------- waiting until nothing is left to happen

# A worker looks every HEARTBEAT_CHECK_S whether what its heartbeat says changed, and writes it then
# (store/owners.py); a beat older than STALE_AFTER_S is a worker gone.
HEARTBEAT_S = HEARTBEAT_CHECK_S
LIVE_BEAT_S = STALE_AFTER_S
METRICS_LINE = re.compile(r"health and metrics on (http://[^/\s]+)/")
NEEDS_METRICS = ("a memory:// worker shows what it has left only on its /metrics: start it with BUIDL_HTTP_PORT=0 "
                 "and pass its WorkerProcess, to wait until it is idle")


def wait_idle(sim: SimulatorClient, *workers: WorkerProcess | Mapping[str, str], timeout: float = 30.0,
              interval: float = 0.1) -> dict[str, Any]:
    """Wait until nothing is left to happen; return the simulator's state from that moment.

    What a check that something did NOT happen (a second reply, a second run) must read: a fixed
    sleep lets a slow duplicate slip past on a loaded machine, this waits as long as work is left.
    Idle is, at one look:
    - Slack's side: no envelope waiting for a link or sent and not acked, and every event acked or
      given up on (no retry of it still to come);
    - the store of each of `workers` (a worker or stack process, or its environment): no inbox row
      processing or pending, no reply unsent. A claim writes its row before the ack, the row turns
      done in the transaction that queues its replies, and the relay's deliveries are inbox rows too;
    - every worker's heartbeat in those stores, written after the above first held: every envelope
      it acked decided new or duplicate, no handler running or queued, no post or delivery in
      flight (what only the process knows: a degraded worker's local decisions);
    - instead, for a live worker that serves /metrics (BUIDL_HTTP_PORT; 0 picks a free port), and
      must for an in-process store (memory://), the same read live there: its heartbeat may be
      what a failing store keeps from landing. A worker that has exited holds nothing any more.
    AssertionError naming what is still busy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    envs = [w.env if isinstance(w, WorkerProcess) else w for w in workers]
    metrics = _metrics_urls(workers)
    with contextlib.ExitStack() as opened:
        stores = [opened.enter_context(contextlib.closing(s)) for s in _stores_of(envs)]
        quiet_since: float | None = None
        while True:
            why = _busy_now(sim, stores, metrics.values())
            if why is None:
                quiet_since = quiet_since or time.time()
                why = next(filter(None, (_heartbeats_busy(s, quiet_since, metrics) for s in stores)), None)
            else:
                quiet_since = None
            if why is None:
                state = sim.state()
                unsettled = [k for k, e in state["events"].items() if not (e["acked"] or e["missed"])]
                if not unsettled:
                    return state
                why = f"simulator: {len(unsettled)} event(s) neither acked nor given up on"
            if time.monotonic() >= deadline:
                raise AssertionError(f"not idle after {timeout:g}s: {why}")
            time.sleep(interval)


def _in_process_store(env: Mapping[str, str]) -> bool:
    return (env.get("BUIDL_STORE_URL") or "").startswith("memory://")


def _metrics_urls(workers: Iterable[WorkerProcess | Mapping[str, str]]) -> dict[int, str]:
    """pid -> the base URL of its /metrics (from its log), for each live worker process serving them."""
    urls: dict[int, str] = {}
    for worker in workers:
        if not isinstance(worker, WorkerProcess):
            if _in_process_store(worker):
                raise AssertionError(NEEDS_METRICS)
            continue
        if worker.command != "worker" or worker.proc is None or worker.proc.poll() is not None:
            continue  # a stack's workers beat into its store; an exited worker holds nothing any more
        found = METRICS_LINE.search(worker.output())
        if found:
            urls[worker.pid] = found.group(1)
        elif _in_process_store(worker.env):
            raise AssertionError(NEEDS_METRICS)
    return urls


def _stores_of(envs: Iterable[Mapping[str, str]]) -> list[Any]:
    """An admin handle on each distinct store the workers of `envs` share (none for memory://)."""
    from buidl_edge.store.redis import RedisStore
    from buidl_edge.store.sqlite import SqliteStore

    stores: list[Any] = []
    seen: set[str] = set()
    for env in envs:
        if _in_process_store(env):
            continue
        settings = load_settings(env)
        url = settings.store_url or f"sqlite:///{settings.database_path}"
        if url in seen:
            continue
        seen.add(url)
        if url.startswith(("redis://", "rediss://")):
            stores.append(RedisStore(url))
            continue
        try:
            stores.append(SqliteStore(url.removeprefix("sqlite:///"), create=False, checkpoint_interval_s=None))
        except StoreMissing:  # no worker has written anything yet
            pass
    return stores


def _busy_now(sim: SimulatorClient, stores: Sequence[Any], metrics: Iterable[str]) -> str | None:
    summary = sim.summary()
    for count, what in ((summary["pending"], "envelope(s) waiting for a link"),
                        (summary["unacked_in_flight"], "envelope(s) sent and not acked yet")):
        if count:
            return f"simulator: {count} {what}"
    for store in stores:
        try:
            inbox, outbox = store.inbox_stats(), store.outbox_stats()
        except StoreError as exc:
            return f"{store.describe()}: {exc}"
        left = {"inbox rows processing": inbox["processing"], "inbox rows pending": inbox["pending"],
                "replies unsent": outbox["depth"]}
        if any(left.values()):
            return f"{store.describe()}: {_nonzero(left)}"
    return next(filter(None, (_metrics_busy(url) for url in metrics)), None)


def _heartbeats_busy(store: Any, since: float, read_live: Mapping[int, str]) -> str | None:
    """What the heartbeats of `store`'s workers say is left, but for those `read_live` (pid -> /metrics)."""
    try:
        beats = store.workers(max_age_s=LIVE_BEAT_S)
    except StoreError as exc:
        return f"{store.describe()}: {exc}"
    for beat in beats:
        if beat["pid"] in read_live and beat["host"] == HOST:
            continue
        # Written after the rest went idle, or older but still what it has to say: a worker writes
        # a changed heartbeat at its next check, so one that let a check (and a margin) pass since
        # had nothing new to say.
        if beat["updated_at"] <= since and time.time() - since < HEARTBEAT_S + 0.5:
            return f"worker {beat['owner']}: no heartbeat yet since the rest went idle"
        stats = beat["stats"]
        dispatch, outbox, relay = (stats.get(k) or {} for k in ("dispatch", "outbox", "relay"))
        acked = sum(c.get("envelopes_acked") or 0 for c in stats.get("connections") or [])
        decided = (dispatch.get("envelopes_new") or 0) + (dispatch.get("duplicates") or 0)
        left = {"acked envelopes the store has not decided yet": max(0, acked - decided),
                "handlers running": dispatch.get("handlers_running"),
                "handlers queued": dispatch.get("handlers_queued"),
                "replies being posted": outbox.get("in_flight"),
                "deliveries to the app in flight": relay.get("in_flight")}
        if any(left.values()):
            return f"worker {beat['owner']}: {_nonzero(left)}"
    return None


def _metrics_busy(url: str) -> str | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(f"{url}/metrics", timeout=5).text
    except requests.RequestException as exc:
        return f"{url}/metrics: {type(exc).__name__}"
    totals: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    left = {"acked envelopes not decided yet": max(0.0, totals["buidl_envelopes_acked_total"]
                                                   - totals["buidl_envelopes_new_total"]
                                                   - totals["buidl_envelopes_duplicate_total"]),
            "handlers running": totals["buidl_handlers_running"], "handlers queued": totals["buidl_handlers_queued"],
            "replies unsent": totals["buidl_outbox_depth"],
            "deliveries to the app in flight": totals["buidl_relay_in_flight"]}
    return f"{url}: {_nonzero(left)}" if any(left.values()) else None


def _nonzero(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{value:g} {what}" for what, value in counts.items() if value)



class CountedSlots:
    """A real slot store that counts each holder's acquire calls: what a test waits on to know that a
    waiting slot was refused again and again, instead of sleeping for "several retries"."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.asked: Counter[str] = Counter()

    def acquire_slot(self, holder: str, limit: int, ttl: float) -> bool:
        self.asked[holder] += 1
        return bool(self.store.acquire_slot(holder, limit, ttl))

    def renew_slots(self, holders: Sequence[str], limit: int, ttl: float) -> list[str]:
        return list(self.store.renew_slots(holders, limit, ttl))

    def release_slot(self, holder: str) -> None:
        self.store.release_slot(holder)


# ---------------------------------------------------------------- store reads only tests need


def outbox_rows(store: Any, envelope_id: str) -> list[OutboxRow]:
    """The replies one envelope queued, in order: the admin API's outbox list, read whole."""
    return sorted((row for row in store.outbox_list(limit=1_000_000) if row.envelope_id == envelope_id),
                  key=lambda row: row.id)


def inbox_state(store: Any, envelope_id: str) -> str:
    """The state of the envelope's inbox row, which the test expects to be there."""
    row = store.inbox_row(envelope_id)
    assert row is not None, f"no inbox row for {envelope_id}"
    return row["state"]


def log_args(record: logging.LogRecord) -> tuple[Any, ...]:
    """The %-arguments a log line was written with: a tuple, as every line the tests read takes
    positional ones (a mapping or none would be a different line)."""
    assert isinstance(record.args, tuple), (record.msg, record.args)
    return record.args
