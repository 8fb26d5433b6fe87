"""Run real worker processes against the simulator: shared by the demo, tests and benchmarks.

Tokens are made up at run time, so no token-shaped string lives in the repository.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from buidl_edge.sandbox.simulator.access import (
    fake_tokens,  # also imported from here by tests and scripts
)


def worker_env(api_url: str, tokens: Mapping[str, str] | None = None, **extra: Any) -> dict[str, str]:
    """Environment for a worker aimed at the simulator, with quick test-friendly timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_"))}
    env.update(tokens or fake_tokens())
    env.update({
        "SLACK_API_URL": api_url,
        "BUIDL_BACKOFF_BASE": "0.2",
        "BUIDL_BACKOFF_CAP": "2",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    if "BUIDL_STATE_DIR" not in env:
        # A state dir of its own, so runs never share a SQLite inbox (made only when none is given).
        env["BUIDL_STATE_DIR"] = tempfile.mkdtemp(prefix="buidl-state-")
    return env


class WorkerProcess:
    """`python -m buidl_edge worker` as a child; output goes to a file the caller can read."""

    command = "worker"
    # The stack is signalled as a group, the way Heroku signals every process of a dyno.
    own_session = False

    def __init__(self, env: Mapping[str, str], args: tuple[str, ...] = (), log_path: Path | None = None,
                 stderr_path: Path | None = None, cwd: Path | None = None) -> None:
        """Output to `log_path`; stderr to `stderr_path` instead when given. Run in `cwd` if given."""
        self.env = dict(env)
        self.args = args
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="buidl-worker-", suffix=".log")[1])
        self.stderr_path = stderr_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        # Append mode, as a platform's log pipe behaves: under `run`, the workers write to the same
        # file through supervisord's reopened /dev/stdout.
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.log_path, "ab"))
            err = files.enter_context(open(self.stderr_path, "ab")) if self.stderr_path else subprocess.STDOUT
            self.proc = subprocess.Popen([sys.executable, "-m", "buidl_edge", self.command, *self.args],
                                         env=self.env, cwd=self.cwd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=self.own_session)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        if self.own_session:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it overstays; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.own_session:  # nothing of the group may outlive the stack
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class StackProcess(WorkerProcess):
    """`python -m buidl_edge run`: supervisord and its workers, in a process group of their own."""

    command = "run"
    own_session = True

    @property
    def state_dir(self) -> Path:
        return Path(self.env["BUIDL_STATE_DIR"])


class WriteLockHolder:
    """Another process holding a SQLite file's write lock (`BEGIN EXCLUSIVE`) until `release`, as a
    backup, an operator's sqlite3 shell or a long admin command does: the fault of issue 21."""

    SCRIPT = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "conn.execute('BEGIN EXCLUSIVE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute('COMMIT')\n"
        "print('released', flush=True)\n"
    )

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "held":
            self.proc.kill()
            raise RuntimeError(f"could not take the write lock of {db}")

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.stdout.readline()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def small_filesystem(mount_point: Path, size: str) -> Iterator[str | None]:
    """A real filesystem of `size` (tmpfs, e.g. "4m") mounted at `mount_point` for the block: a disk
    that can really be filled. Yields None, or why it cannot be had (mounting needs root)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield "mounting a filesystem needs root"
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        yield f"cannot mount a tmpfs here: {done.stderr.strip()}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill_disk(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem says ENOSPC; the file to delete to free it."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    try:
        with open(filler, "wb") as out:
            while True:
                out.write(chunk)
                out.flush()
    except OSError:  # ENOSPC: full now (even the open fails on a disk that is full already)
        pass
    return filler


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
