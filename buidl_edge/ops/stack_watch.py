"""What `buidl-edge run` becomes once it has checked and rendered: supervisord, watched from inside.

`run` execs `python -m buidl_edge.ops.stack_watch CONF`, so the dyno's main process is supervisord
itself, with `StackWatch` loaded as an rpcinterface plugin (the one hook supervisord loads into
its own process). The watch hears every worker state change as supervisord makes it, logs it in
the workers' own format (supervisord itself runs silent), and on a stop no restart can fix
(link_disabled, a refused token, an app that does not import) shuts supervisord down; `main`
then exits 3 with the worker's reason, where supervisord alone would exit 0. One process, where
a parent polling its supervisord child over XML-RPC cost a whole interpreter more.

supervisor is imported inside the functions, not at the top: `main` makes the process's first
import of it, with OpenSSL left out unless the dyno's endpoint is served (without_openssl.py).
"""
from __future__ import annotations

import configparser
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from buidl_edge.ops import health_events
from buidl_edge.runtime.exitcodes import EXIT_FATAL
from buidl_edge.runtime.fatal_marker import read_fatal

log = logging.getLogger("buidl_edge.run")

WORKER_GROUP = "worker"


class StackWatch:
    """The rpcinterface plugin: worker state changes in, log lines and a fatal verdict out."""

    verdict: dict[str, Any] | None = None  # kept across a SIGHUP restart, which makes a new watch

    def __init__(self, supervisord: Any, state_dir: Path) -> None:
        from supervisor import events

        self.supervisord = supervisord
        self.state_dir = state_dir
        events.subscribe(events.ProcessStateEvent, self.on_state)
        events.subscribe(events.ProcessCommunicationStdoutEvent, self.on_told)

    def on_told(self, event: Any) -> None:
        """A worker said its store is degraded, or writable again (health_events.py)."""
        health_events.heard(event.process.config.name, event.data)

    def on_state(self, event: Any) -> None:
        from supervisor import events

        process = event.process
        if process.group.config.name != WORKER_GROUP:
            return
        name = process.config.name
        if isinstance(event, (events.ProcessStateExitedEvent, events.ProcessStateStoppedEvent,
                              events.ProcessStateBackoffEvent)):
            health_events.gone(name)
        if isinstance(event, events.ProcessStateRunningEvent):
            log.info("%s running (pid %d)", name, process.pid)
        elif isinstance(event, events.ProcessStateStoppedEvent):
            log.info("%s stopped", name)
        elif isinstance(event, events.ProcessStateExitedEvent):
            self._exited(name, process.exitstatus)
        elif isinstance(event, events.ProcessStateBackoffEvent):
            if not self._fatal_marker():
                log.warning("%s exited while starting; supervisord tries again", name)
        elif isinstance(event, events.ProcessStateFatalEvent) and not self._fatal_marker():
            self.stop_for_good(f"{name} could not start: supervisord gave up after repeated exits "
                               "while starting", name)

    def _exited(self, name: str, exit_status: int) -> None:
        if self._fatal_marker():
            return
        status = "killed by a signal" if exit_status < 0 else f"status {exit_status}"
        if exit_status == EXIT_FATAL:
            self.stop_for_good(f"{name} exited with status {EXIT_FATAL} (a stop no restart can fix)", name)
        elif exit_status == 0 or self.shutting_down:
            log.info("%s stopped (%s)", name, status)
        else:
            log.warning("%s exited unexpectedly (%s); supervisord restarts it", name, status)

    @property
    def shutting_down(self) -> bool:
        from supervisor.states import SupervisorStates

        return self.supervisord.options.mood < SupervisorStates.RUNNING

    def _fatal_marker(self) -> bool:
        """A worker that stops for good leaves its reason first; it may exit too quickly for
        supervisord to see more than a failed start."""
        marker = read_fatal(self.state_dir)
        if marker:
            self.stop_for_good(marker.get("reason") or "a worker stopped for good", marker.get("process"))
        return bool(marker)

    def stop_for_good(self, reason: str, process: str | None) -> None:
        from supervisor.states import SupervisorStates

        if StackWatch.verdict is None:
            StackWatch.verdict = {"reason": reason, "process": process}
        # What supervisorctl shutdown does: every worker is stopped, then supervisord returns.
        self.supervisord.options.mood = SupervisorStates.SHUTDOWN


_health: Any = None  # the dyno's endpoint, started once: a SIGHUP restart makes a new watch


def make_watch(supervisord: Any, **config: str) -> StackWatch:
    """supervisord's `supervisor.rpcinterface_factory` for the watch (stack.render_config names it)."""
    global _health
    if config.get("http_port") and _health is None:
        _health = _serve_health(config.get("http_host") or "0.0.0.0", int(config["http_port"]))
    return StackWatch(supervisord, _state_dir())


def _state_dir() -> Path:
    """`run` sets BUIDL_STATE_DIR for this process and the workers alike: the one place it is read."""
    return Path(os.environ["BUIDL_STATE_DIR"])


def _serve_health(host: str, port: int) -> Any:
    """The dyno's /healthz /readyz /metrics, read from the workers' heartbeats in the store; the
    workers get no BUIDL_HTTP_PORT, so this is the dyno's one endpoint."""
    import dataclasses

    from buidl_edge.config import load_settings
    from buidl_edge.ops import dyno_health

    settings = dataclasses.replace(load_settings(), http_host=host, http_port=port)
    return dyno_health.serve(settings)


def _serves_health(conf: str) -> bool:
    """Whether the rendered config gives the watch the dyno's endpoint (supervise.watch_section)."""
    parser = configparser.RawConfigParser(strict=False)
    parser.read(conf)
    return parser.has_option("rpcinterface:buidl_edge", "http_port")


def main(argv: list[str]) -> int:
    """supervisord in the foreground on the rendered config; 3 after a fatal stop, else its 0."""
    from buidl_edge.config import log_options
    from buidl_edge.observability.logs import setup_logging
    from buidl_edge.ops.without_openssl import openssl_left_out

    level, json_lines = log_options()
    setup_logging(level, json_lines)
    conf = argv[0]
    # supervisor's first import in this process, without OpenSSL (without_openssl.py).
    # prometheus_client, which serves the dyno's endpoint, needs urllib.request's HTTPS handler,
    # so OpenSSL stays in for that.
    with contextlib.nullcontext() if _serves_health(conf) else openssl_left_out():
        from supervisor import supervisord
    supervisord.main(["-n", "-c", conf])
    fatal = read_fatal(_state_dir()) or StackWatch.verdict
    if fatal:
        print(f"buidl-edge run: stopped for good: {fatal.get('reason')} "
              f"({fatal.get('process') or 'a worker'})", file=sys.stderr, flush=True)
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
