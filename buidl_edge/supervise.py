"""supervisord for the worker processes: config rendering, start, fatal-stop watch, status.

`buidl-edge run` keeps supervisord as its child rather than exec-ing it, so that
after a fatal stop (link_disabled, a refused token) it can exit non-zero with
the reason: supervisord itself always exits 0.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from buidl_edge.config import SLACK_MAX_CONNECTIONS, ConfigError, Settings

TEMPLATE_NAME = "supervisord.conf.tmpl"
FATAL_EXIT = 3
# Heroku kills the dyno 30 s after SIGTERM; workers drain in 10 s, so 20 s leaves room.
STOP_WAIT_S = 20
FATAL_MARKER = "fatal.json"
SOCKET_NAME = "supervisor.sock"
MAX_SOCKET_PATH = 107 - 8  # sun_path less supervisord's ".<pid>" while it binds


def check_connection_budget(settings: Settings) -> None:
    """P x K connections plus one refresh overlap per process must fit Slack's 10 per app."""
    steady = settings.processes * settings.connections
    peak = steady + settings.processes
    if peak > SLACK_MAX_CONNECTIONS:
        raise ConfigError(
            f"{settings.processes} processes x {settings.connections} connections = {steady}, "
            f"{peak} while each process refreshes one; Slack allows {SLACK_MAX_CONNECTIONS} per app"
        )


def template_path() -> Path:
    """deploy/ beside the package (a checkout or editable install), else in the working dir."""
    candidates = [Path(__file__).resolve().parent.parent / "deploy" / TEMPLATE_NAME,
                  Path.cwd() / "deploy" / TEMPLATE_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"cannot find deploy/{TEMPLATE_NAME}; run from the buidl-edge checkout")


def check_socket_path(state_dir: Path) -> None:
    """supervisord's control socket lives in the state dir; Linux caps a unix socket path at 107
    bytes, and supervisord first binds `<socket>.<pid>`, so leave room for that suffix."""
    path = socket_path(state_dir)
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(f"BUIDL_STATE_DIR is too long for supervisord's control socket ({path} is "
                          f"{size} bytes, at most {MAX_SOCKET_PATH}): use a shorter path")


def render_config(settings: Settings) -> Path:
    state_dir = settings.state_dir.resolve()
    check_socket_path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    text = Template(template_path().read_text()).substitute(
        state_dir=str(state_dir), python=sys.executable, processes=settings.processes,
        fatal_exit=FATAL_EXIT, stopwaitsecs=STOP_WAIT_S,
    )
    target = state_dir / "supervisord.conf"
    target.write_text(text)
    return target


def fatal_marker(state_dir: Path) -> Path:
    return state_dir.resolve() / FATAL_MARKER


def record_fatal(state_dir: Path, reason: str) -> None:
    """Called by a worker before its fatal exit, so `run` can say why the stack stopped."""
    marker = fatal_marker(state_dir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"reason": reason, "pid": os.getpid(),
                               "process": os.environ.get("SUPERVISOR_PROCESS_NAME", ""),
                               "at": time.time()}))
    tmp.replace(marker)


def read_fatal(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(fatal_marker(state_dir).read_text())
    except (OSError, ValueError):
        return None


def run_stack(settings: Settings) -> int:
    """Start supervisord in the foreground; forward signals; exit non-zero after a fatal stop."""
    check_connection_budget(settings)
    conf = render_config(settings)
    fatal_marker(settings.state_dir).unlink(missing_ok=True)
    env = dict(os.environ, BUIDL_STATE_DIR=str(settings.state_dir.resolve()),
               BUIDL_PROCESSES=str(settings.processes), BUIDL_CONNECTIONS=str(settings.connections))
    child = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)], env=env)

    def forward(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    fatal = read_fatal(settings.state_dir)
    if fatal:
        print(f"buidl-edge run: stopped for good: {fatal.get('reason')} "
              f"({fatal.get('process') or 'a worker'})", file=sys.stderr, flush=True)
        return FATAL_EXIT
    return code


def fatal_watch() -> None:
    """supervisord event listener: on a worker's fatal stop, shut the whole stack down."""
    from supervisor import childutils

    state_dir = Path(os.environ.get("BUIDL_STATE_DIR", ".buidl"))
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        fields = dict(part.split(":", 1) for part in payload.split() if ":" in part)
        stop = headers.get("eventname") == "PROCESS_STATE_FATAL" and fields.get("groupname") == "worker"
        if stop and not read_fatal(state_dir):
            record_fatal(state_dir, f"{fields.get('processname')} could not stay up (see its log)")
        # A fatal exit inside startsecs counts as a failed start (BACKOFF), not EXITED.
        ended = headers.get("eventname") in ("PROCESS_STATE_EXITED", "PROCESS_STATE_BACKOFF")
        if stop or (ended and read_fatal(state_dir)):
            os.kill(os.getppid(), signal.SIGTERM)
        childutils.listener.ok(sys.stdout)


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    uptime_s: float
    exit_status: int


class SupervisorDown(Exception):
    """No supervisord answers on the state directory's socket."""


def socket_path(state_dir: Path) -> Path:
    return state_dir.resolve() / SOCKET_NAME


def supervisor_processes(state_dir: Path) -> list[ProcessInfo]:
    from supervisor.xmlrpc import SupervisorTransport

    sock = socket_path(state_dir)
    if not sock.exists():
        raise SupervisorDown(f"no supervisor is running for {state_dir} (no {sock.name})")
    transport = SupervisorTransport(None, None, serverurl=f"unix://{sock}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        infos = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Fault) as exc:
        raise SupervisorDown(f"supervisor for {state_dir} does not answer: {type(exc).__name__}") from None
    out = []
    for info in infos:
        if info.get("group") != "worker":
            continue
        running = info["statename"] == "RUNNING"
        out.append(ProcessInfo(name=info["name"], state=info["statename"], pid=info["pid"],
                               uptime_s=float(info["now"] - info["start"]) if running else 0.0,
                               exit_status=info.get("exitstatus", 0)))
    return out
