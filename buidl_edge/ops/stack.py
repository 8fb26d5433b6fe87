"""`buidl-edge run`: check, render supervisord's config, then become supervisord (stack_watch.py).

Everything that can be refused is refused here, with one line, before anything starts: the
connection budget, a state dir that cannot be used (run_checks.py), a stack already running on
the state dir, the health port.
Then the process execs supervisord with the watch loaded into it, so the dyno runs one
supervisor process and the workers, and no parent stays up only to watch.
"""
from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys

from buidl_edge.config import ConfigError, Settings
from buidl_edge.ops.run_checks import check_stack
from buidl_edge.ops.supervise import Credentials, live_supervisor, render_config
from buidl_edge.runtime.fatal_marker import fatal_marker


def run_stack(settings: Settings) -> int:
    """Exec supervisord in the foreground under the watch; returns only when a check refuses."""
    state_dir = settings.state_dir
    check_stack(settings)  # the sizing rule, a usable state dir, what the health port needs
    running = live_supervisor(state_dir)
    if running is not None:  # before anything is written: the running stack's config stays as it is
        pid = f" (supervisord pid {running})" if running else ""
        raise ConfigError(f"a stack is already running on {state_dir}{pid}: stop it first, "
                          "or give this one its own BUIDL_STATE_DIR")
    _check_port_free(settings)
    _append_to_stdout()
    conf = render_config(settings, Credentials.fresh())
    fatal_marker(state_dir).unlink(missing_ok=True)
    env = dict(os.environ, BUIDL_STATE_DIR=str(state_dir), BUIDL_APP=settings.app_spec,
               BUIDL_PROCESSES=str(settings.processes), BUIDL_CONNECTIONS=str(settings.connections))
    env.pop("BUIDL_HTTP_PORT", None)  # one endpoint for the dyno, the watch's, rather than one per worker
    if settings.relay_url:  # `run --relay URL`: every worker relays there
        env["BUIDL_RELAY_URL"] = settings.relay_url
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "buidl_edge.ops.stack_watch", str(conf)], env)
    raise AssertionError("unreachable: execve returns only by raising")


def _check_port_free(settings: Settings) -> None:
    """The watch binds BUIDL_HTTP_PORT inside supervisord; a port already taken is said here, in one line."""
    if settings.http_port is None:
        return
    probe = socket.socket(socket.AF_INET)  # as wsgiref's server, which the endpoint is, binds
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((settings.http_host, settings.http_port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on BUIDL_HTTP_PORT {settings.http_port}: {exc.strerror or exc}") from None
    finally:
        probe.close()


def _append_to_stdout() -> None:
    """Workers write to supervisord's stdout_logfile=/dev/stdout, which reopens our stdout: when that
    is a regular file (`run > file`), append mode keeps their lines and ours from overwriting each other."""
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_APPEND)
    except OSError:
        pass
