"""Drive a simulator from plain (non-gevent) processes: tests, demo, benchmarks.

Must not import gevent: it is used next to code that is not monkey-patched.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[3]


class SimulatorError(RuntimeError):
    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error  # the simulator's own error text, when it answered with one


class SimulatorClient:
    """The `/_sim/` control API over HTTP."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def inject(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return self._post("events", {"kind": kind, **fields})["events"]

    def state(self) -> dict[str, Any]:
        return self._get("state")

    def event(self, key: str) -> dict[str, Any]:
        """One injected event, with the payload Slack sends for it."""
        return self._get(f"event?key={quote(key)}")["event"]

    def summary(self) -> dict[str, Any]:
        return self._get("summary")

    def sentry(self, raw: bool = False) -> dict[str, Any]:
        """Events the Sentry ingestion endpoint recorded; `raw` adds each decoded envelope."""
        return self._get("sentry?raw=1" if raw else "sentry")

    def fault(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self._post("fault", {"kind": kind, **fields})

    def configure(self, **knobs: Any) -> dict[str, Any]:
        return self._post("config", knobs)

    def reset(self) -> None:
        self._post("reset", {})

    def load(self, mode: str, **params: Any) -> dict[str, Any]:
        """Start a load run in the simulator (mode window, rate or stop); see simulator/load.py."""
        return self._post("load", {"mode": mode, **params})

    def load_status(self, keys: bool = False, brief: bool = False) -> dict[str, Any]:
        """The current load run; `brief` leaves out latencies and keys (for polling)."""
        query = "&".join(name for name, on in (("keys=1", keys), ("brief=1", brief)) if on)
        return self._get("load?" + query if query else "load")

    def health(self) -> bool:
        try:
            return bool(self._get("health").get("ok"))
        except (requests.RequestException, SimulatorError):
            return False

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 source: str = "summary", interval: float = 0.05) -> dict[str, Any]:
        """Poll summary (or state) until `predicate` holds; AssertionError naming `what` otherwise."""
        fetch = self.state if source == "state" else self.summary
        deadline = time.monotonic() + timeout
        while True:
            last = fetch()
            if predicate(last):
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last {source}: {last}")
            time.sleep(interval)

    def _get(self, name: str) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.base_url}/_sim/{name}", timeout=self.timeout))

    def _post(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.session.post(f"{self.base_url}/_sim/{name}", json=body, timeout=self.timeout))

    @staticmethod
    def _check(resp: requests.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = {"ok": False, "error": resp.text[:200]}
        if resp.status_code >= 400 or not data.get("ok"):
            raise SimulatorError(f"{resp.request.method} {resp.url}: HTTP {resp.status_code} {data.get('error')}",
                                 str(data.get("error")))
        return data


class SimulatorProcess:
    """A simulator in a child process, up for the duration of a `with` block."""

    def __init__(self, start_timeout: float = 10.0, python: str = sys.executable) -> None:
        self.start_timeout = start_timeout
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="buidl-sim-")
        self.log_path = os.path.join(self._tmp.name, "simulator.log")
        self.client: SimulatorClient  # set by start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def sentry_dsn(self, project: int = 1) -> str:
        """A DSN aimed at this simulator's Sentry endpoint, with a key made up now."""
        return f"http://{secrets.token_hex(16)}@127.0.0.1:{self.port}/{project}"

    def start(self) -> SimulatorProcess:
        ready = os.path.join(self._tmp.name, "port")
        env = dict(os.environ)
        # The project may not be installed: let the child import it from here.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "buidl_edge.sandbox.simulator", "--host", "127.0.0.1", "--port", "0",
                 "--ready-file", ready],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_tail()
                self._tmp.cleanup()
                raise SimulatorError(f"simulator did not start; log:\n{tail}")
            time.sleep(0.02)
        with open(ready) as fh:
            self.port = int(fh.read().strip())
        self.client = SimulatorClient(self.base_url)
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self._tmp.cleanup()
