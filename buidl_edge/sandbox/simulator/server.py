"""Run the fake Slack until SIGTERM/SIGINT. gevent must be patched before this import."""
from __future__ import annotations

import errno
import os
import signal
import tempfile

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from .access import ACCEPTED, export_lines
from .app import SimApp, SimHandler


class ListenError(OSError):
    """The simulator cannot listen where it was asked to: one line, for `simulate` to print."""


def run(host: str, port: int, ready_file: str | None = None) -> None:
    app = SimApp()
    server = WSGIServer((host, port), app, handler_class=SimHandler, log=None)
    try:
        server.start()
    except OSError as exc:
        hint = "; is another simulator running there? pick another with --port (0 takes a free one)" \
            if exc.errno == errno.EADDRINUSE else ""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    sweeper = gevent.spawn(app.hub.sweep_forever)
    bound = server.address[1]
    # The response_urls it hands out must reach it from this machine, whatever it listens on.
    reachable = host if host in ("127.0.0.1", "localhost") else "127.0.0.1"
    app.hub.base_url = f"http://{reachable}:{bound}"
    print(f"simulator listening on http://{host}:{bound}", flush=True)
    print(banner(app.hub.base_url), flush=True)
    if ready_file:
        _write_atomic(ready_file, str(bound))

    stop = Event()
    # Handlers only record the signal; the main greenlet does the stopping.
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    sweeper.kill()
    server.stop(timeout=1)


def banner(base_url: str) -> str:
    """What a user needs to point a worker at this simulator and drive it, printed at start."""
    exports = "\n".join(f"  {line}" for line in export_lines(base_url))
    return (f"tokens: it checks only their type ({ACCEPTED})\n"
            f"point a worker at it with these (tokens made up just now), or `eval \"$(buidl-edge sim env)\"`:\n"
            f"{exports}\n"
            f"then: BUIDL_APP=module:app buidl-edge worker\n"
            f"drive it: buidl-edge sim --help   (its control API: GET {base_url}/_sim/)")


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ready-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
