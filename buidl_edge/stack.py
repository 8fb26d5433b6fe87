"""`buidl-edge run`: supervisord as a child, watched over XML-RPC, stopped for good when a worker is.

`run` keeps supervisord as its child rather than exec-ing it: supervisord always exits 0, and
only the parent can turn a worker's fatal stop (link_disabled, a refused token, an app that does
not import) into a non-zero exit with the worker's reason. It also is the one place that logs
the workers' starts and exits, in the workers' own log format (supervisord itself runs silent).
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buidl_edge.config import ConfigError, Settings
from buidl_edge.exitcodes import EXIT_FATAL
from buidl_edge.fatal_marker import fatal_marker, read_fatal
from buidl_edge.logs import setup_logging
from buidl_edge.supervise import (
    Credentials,
    ProcessInfo,
    Supervisor,
    SupervisorDown,
    check_connection_budget,
    check_socket_path,
    live_supervisor,
    render_config,
)

log = logging.getLogger("buidl_edge.run")

POLL_INTERVAL_S = 0.5
# Once a fatal stop is seen, supervisord gets this long to stop the workers before it is killed.
SHUTDOWN_GRACE_S = 25.0


@dataclass
class StackWatch:
    """Turns successive snapshots of supervisord's processes into log lines and a fatal verdict.

    Polling misses a restart that happens between two looks, so a changed pid counts as an exit
    of the old process too.
    """

    supervisor: Supervisor
    state_dir: Path
    stopping: bool = False
    last: dict[str, ProcessInfo] = field(default_factory=dict)

    def poll(self) -> dict[str, Any] | None:
        """One look; returns {"reason", "process"} once the stack must stop for good."""
        fatal = read_fatal(self.state_dir)
        if fatal:
            return fatal
        try:
            infos = self.supervisor.processes()
        except SupervisorDown:
            return None  # not listening yet, or already shutting down
        verdict = None
        for info in infos:
            verdict = self._transition(self.last.get(info.name), info) or verdict
        self.last = {info.name: info for info in infos}
        return read_fatal(self.state_dir) or verdict

    def _transition(self, before: ProcessInfo | None, now: ProcessInfo) -> dict[str, Any] | None:
        name = now.name
        gone = before is not None and before.pid != 0 and (
            now.pid != before.pid or now.state in ("EXITED", "BACKOFF", "FATAL", "STOPPED"))
        if gone:
            assert before is not None
            verdict = self._exited(name, before, now)
            if verdict:
                return verdict
        if now.state == "RUNNING" and (before is None or before.state != "RUNNING" or before.pid != now.pid):
            log.info("%s running (pid %d)", name, now.pid)
        if now.state == "FATAL":
            return {"reason": f"{name} could not start: supervisord gave up after repeated exits "
                              "while starting", "process": name}
        return None

    def _exited(self, name: str, before: ProcessInfo, now: ProcessInfo) -> dict[str, Any] | None:
        """The process seen last time is gone. supervisord keeps its exit status only while the
        program stays EXITED; once it is started again (or failed inside startsecs) it is unknown."""
        status = f" ({_status(now.exit_status)})" if now.state == "EXITED" else ""
        if now.state == "EXITED" and now.exit_status == EXIT_FATAL:
            return {"reason": f"{name} exited with status {EXIT_FATAL} (a stop no restart can fix)",
                    "process": name}
        if now.state == "STOPPED" or self.stopping or (now.state == "EXITED" and now.exit_status == 0):
            log.info("%s stopped%s", name, status)
        elif now.state == "FATAL":
            pass  # said by the verdict
        elif before.state == "RUNNING":
            log.warning("%s exited unexpectedly%s; supervisord restarts it", name, status)
        else:
            log.warning("%s exited while starting%s; supervisord tries again", name, status)
        return None

    def supervisor_exited(self, code: int) -> None:
        """supervisord is gone: it stopped every worker first, unless it was killed."""
        for info in self.last.values():
            if info.pid and info.state in ("RUNNING", "STARTING", "STOPPING"):
                if code == 0:
                    log.info("%s stopped", info.name)
                else:
                    log.warning("%s: supervisord ended (%s) while it ran", info.name, _status(code))
        self.last = {}


def _status(exit_status: int) -> str:
    return "killed by a signal" if exit_status < 0 else f"status {exit_status}"


def run_stack(settings: Settings) -> int:
    """Start supervisord in the foreground, watch it, forward signals; exit non-zero after a
    fatal stop, with the worker's reason."""
    state_dir = settings.state_dir
    check_connection_budget(settings)
    check_socket_path(state_dir)
    running = live_supervisor(state_dir)
    if running is not None:  # before anything is written: the running stack's config stays as it is
        pid = f" (supervisord pid {running})" if running else ""
        raise ConfigError(f"a stack is already running on {state_dir}{pid}: stop it first, "
                          "or give this one its own BUIDL_STATE_DIR")
    if settings.http_port is not None and (settings.store_url or "").startswith("memory://"):
        raise ConfigError("BUIDL_HTTP_PORT under `run` reads the workers' heartbeats from the shared store; "
                          "with BUIDL_STORE_URL=memory:// there is none (run `worker` alone to serve its own)")
    setup_logging(settings.log_level, settings.log_format == "json")
    _append_to_stdout()
    credentials = Credentials.fresh()
    conf = render_config(settings, credentials)
    fatal_marker(state_dir).unlink(missing_ok=True)
    env = dict(os.environ, BUIDL_STATE_DIR=str(state_dir), BUIDL_APP=settings.app_spec,
               BUIDL_PROCESSES=str(settings.processes), BUIDL_CONNECTIONS=str(settings.connections))
    env.pop("BUIDL_HTTP_PORT", None)  # one endpoint for the dyno, here, rather than one per worker
    if settings.relay_url:  # `run --relay URL`: every worker relays there
        env["BUIDL_RELAY_URL"] = settings.relay_url
    health = _serve_health(settings)
    child = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)], env=env)
    watch = StackWatch(Supervisor(state_dir, credentials), state_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        # Heroku signals every process of the dyno: supervisord drains the workers, we keep watching.
        watch.stopping = True
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    fatal = _watch(child, watch)
    watch.supervisor.close()
    if health is not None:
        server, view = health
        server.shutdown()
        view.close()
    fatal = read_fatal(state_dir) or fatal
    if fatal:
        print(f"buidl-edge run: stopped for good: {fatal.get('reason')} "
              f"({fatal.get('process') or 'a worker'})", file=sys.stderr, flush=True)
        return EXIT_FATAL
    return child.returncode


def _serve_health(settings: Settings) -> Any:
    """The dyno's /healthz /readyz /metrics when BUIDL_HTTP_PORT is set; imported only then, so that a
    `run` without it stays a small process."""
    if settings.http_port is None:
        return None
    from buidl_edge import dyno_health

    try:
        return dyno_health.serve(settings)
    except OSError as exc:
        raise ConfigError(f"cannot listen on BUIDL_HTTP_PORT {settings.http_port}: {exc.strerror or exc}") from None


def _append_to_stdout() -> None:
    """Workers write to supervisord's stdout_logfile=/dev/stdout, which reopens our stdout: when that
    is a regular file (`run > file`), append mode keeps their lines and ours from overwriting each other."""
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_APPEND)
    except OSError:
        pass


def _watch(child: subprocess.Popen[bytes], watch: StackWatch) -> dict[str, Any] | None:
    """Poll until supervisord exits; on a fatal verdict, stop it (once) and log the workers' stops."""
    fatal: dict[str, Any] | None = None
    deadline = None
    while True:
        try:
            code = child.wait(timeout=POLL_INTERVAL_S)
            watch.supervisor_exited(code)
            return fatal
        except subprocess.TimeoutExpired:
            pass
        verdict = watch.poll()
        if verdict and fatal is None:
            fatal = verdict
            watch.stopping = True
            child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            child.kill()
