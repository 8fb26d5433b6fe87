"""The whole stack (`python -m buidl_edge run`: supervisord + workers) as a test fixture.

`run` starts in a session of its own. supervisord puts each worker in a process
group of its own (so that killasgroup works), so "every process of the dyno"
is the session, not a process group: `session_pids` finds them through /proc,
and teardown SIGKILLs all of them, orphans included.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buidl_edge.ops.supervise import ProcessInfo, SupervisorDown, supervisor_processes
from buidl_edge.sandbox.harness import StackProcess, fake_tokens, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from buidl_edge.store.sqlite import SqliteStore

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent


def session_pids(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session `sid` (zombies left out)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            found[int(entry)] = cmdline.strip()
    return found


def operator_env(state_dir: Path, **extra: Any) -> dict[str, str]:
    """A shell with the state dir set and no Slack tokens: admin commands only read local state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_"))}
    env.update({"BUIDL_STATE_DIR": str(state_dir), "PYTHONPATH": str(PROJECT_ROOT)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def tokens_env(state_dir: Path, api_url: str, **extra: Any) -> dict[str, str]:
    """The same shell with fresh fake tokens and SLACK_API_URL."""
    return operator_env(state_dir, SLACK_API_URL=api_url, **fake_tokens(), **extra)


def cli(env: dict[str, str], *args: str, cwd: Path | str | None = None, timeout: float = 30.0
        ) -> subprocess.CompletedProcess[str]:
    """`python -m buidl_edge ARGS` as an operator would run it."""
    return subprocess.run([sys.executable, "-m", "buidl_edge", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Stack(StackProcess):
    """`buidl-edge run` against a simulator, in a short-pathed state dir (unix sockets cap at 108 chars),
    with stdout and stderr in files of their own there."""

    def __init__(self, sim: SimulatorProcess, **extra: Any) -> None:
        self.sim = sim
        settings: dict[str, Any] = {
            "BUIDL_PROCESSES": 2, "BUIDL_CONNECTIONS": 1, "BUIDL_DRAIN_TIMEOUT": 10,
            # tests/ on the path for slow_app; the checkout for buidl_edge (cwd is the state dir).
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT)])}
        settings.update(extra)
        env = worker_env(sim.api_url, **settings)
        state_dir = Path(env["BUIDL_STATE_DIR"])
        super().__init__(env, log_path=state_dir / "run.stdout", stderr_path=state_dir / "run.stderr",
                         cwd=state_dir)

    @property
    def out_path(self) -> Path:
        return self.log_path

    @property
    def err_path(self) -> Path:
        assert self.stderr_path is not None
        return self.stderr_path

    # ------------------------------------------------------------ lifecycle

    def start_with(self, *args: str) -> Stack:
        """`run ARGS`."""
        self.args = args
        return self.start()

    def wait_up(self, processes: int, connections: int, timeout: float = 30.0) -> list[ProcessInfo]:
        """Every worker RUNNING in supervisord and every link open at the simulator."""
        infos = wait_until(lambda: self._all_running(processes), timeout, f"{processes} workers RUNNING",
                           interval=0.1)
        self.sim.client.wait_for(lambda s: s["open_connections"] == processes * connections, timeout,
                                 f"{processes * connections} open connections")
        # `run` watches supervisord every 0.5 s: let it see them too, so that what a test does next
        # (a kill, a stop) is judged against a stack it knows is up.
        wait_until(lambda: all(f"{p.name} running (pid {p.pid})" in self.out_path.read_text(errors="replace")
                               for p in infos), timeout, "run to log every worker running", interval=0.1)
        return infos

    def _all_running(self, processes: int) -> list[ProcessInfo] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"run exited {self.proc.returncode} early\n{self.logs()}")
        try:
            infos = supervisor_processes(self.state_dir)
        except SupervisorDown:
            return None
        running = [p for p in infos if p.state == "RUNNING"]
        return infos if len(infos) == processes and len(running) == processes else None

    def processes(self) -> list[ProcessInfo]:
        return supervisor_processes(self.state_dir)

    def worker_pids(self) -> set[int]:
        """Pids of `buidl_edge worker` processes alive in the stack's session."""
        return {pid for pid, cmd in session_pids(self.pid).items() if "buidl_edge worker" in cmd}

    def signal_every_process(self, signum: int) -> list[int]:
        """What Heroku does on a dyno stop: the signal to every process at once."""
        pids = list(session_pids(self.pid))
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids

    def kill_everything(self) -> None:
        """SIGKILL every process of the session (supervisord's orphans too), then reap `run`."""
        for _ in range(3):
            pids = session_pids(self.pid) if self.proc else {}
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # ------------------------------------------------------------ observations

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.env, *args, cwd=self.state_dir)

    def store(self) -> SqliteStore:
        return SqliteStore(self.state_dir / "edge.sqlite3", checkpoint_interval_s=None)

    def inbox_row(self, envelope_id: str) -> dict[str, Any] | None:
        store = self.store()
        try:
            return store.inbox_row(envelope_id)
        finally:
            store.close()

    def inbox_rows(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            return store.inbox_list(limit=10_000)
        finally:
            store.close()

    def status_json(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, f"status failed: {result.stdout}{result.stderr}"
        return json.loads(result.stdout)

    def logs(self) -> str:
        def read(path: Path) -> str:
            return path.read_text(errors="replace")[-6000:] if path.exists() else ""
        return f"--- run stdout ---\n{read(self.out_path)}\n--- run stderr ---\n{read(self.err_path)}"

    def cleanup(self) -> None:
        self.kill_everything()
        shutil.rmtree(self.state_dir, ignore_errors=True)


@pytest.fixture
def stacks(fresh_simulator: SimulatorProcess) -> Iterator[Any]:
    """Factory of stacks on the module's simulator; every process is killed at teardown."""
    made: list[Stack] = []

    def make(**extra: Any) -> Stack:
        stack = Stack(fresh_simulator, **extra)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            print(stack.logs())  # shown by pytest when the test failed
            stack.cleanup()


def mention_each_in_own_channel(sim: SimulatorProcess, prefix: str, count: int, text: str = "<@U0BUIDL> hi"
                                ) -> dict[str, str]:
    """Inject `count` app_mentions, one channel each (no per-channel rate limit); channel -> envelope_id."""
    out = {}
    for i in range(count):
        channel = f"C{prefix}{i:03d}"
        (event,) = sim.client.inject("app_mention", channel=channel, text=text)
        out[channel] = event["envelope_id"]
    return out


def messages_by_channel(sim: SimulatorProcess) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in sim.client.state()["messages"]:
        found.setdefault(message["channel"], []).append(message["text"])
    return found
