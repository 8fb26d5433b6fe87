"""Helpers that several test modules share: defined once here, imported where needed.

Fixtures live in conftest.py; the whole stack is stack_support.py, a redis-server redis_support.py.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pytest

from buidl_edge.sandbox.harness import WorkerProcess, worker_env
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import OutboxRow
from buidl_edge.sandbox.simulator.client import SimulatorClient, SimulatorProcess

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


# ---------------------------------------------------------------- store reads only tests need


def outbox_rows(store: Any, envelope_id: str) -> list[OutboxRow]:
    """The replies one envelope queued, in order: the admin API's outbox list, read whole."""
    return sorted((row for row in store.outbox_list(limit=1_000_000) if row.envelope_id == envelope_id),
                  key=lambda row: row.id)
