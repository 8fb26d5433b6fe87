"""supervisord for the worker processes: the template, its rendering, XML-RPC.

`buidl-edge run` (stack.py) renders the config and becomes supervisord, with the watch
(stack_watch.py) loaded into it; `buidl-edge status` reads supervisord through the client here.
"""
from __future__ import annotations

import configparser
import os
import secrets
import socket
import sys
import xmlrpc.client
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, cast

from buidl_edge.config import REFRESH_SPARE, SLACK_MAX_CONNECTIONS, ConfigError, Settings
from buidl_edge.ops.statefiles import private_dir, write_private
from buidl_edge.runtime.exitcodes import EXIT_FATAL

TEMPLATE_NAME = "supervisord.conf.tmpl"
# An operator's copy, relative to the directory `run` starts in, wins over the packaged one.
OPERATOR_TEMPLATE = Path("deploy") / TEMPLATE_NAME
CONF_NAME = "supervisord.conf"
# Heroku kills the dyno 30 s after SIGTERM; workers drain in 10 s, so 20 s leaves room.
STOP_WAIT_S = 20
SOCKET_NAME = "supervisor.sock"
PID_NAME = "supervisord.pid"
MAX_SOCKET_PATH = 107 - 8  # sun_path less supervisord's ".<pid>" while it binds
RPC_TIMEOUT_S = 5.0


def connection_need(processes: int, connections: int) -> int:
    """Links a dyno may hold at once: each process its connections plus one spare for a refresh."""
    return processes * (connections + REFRESH_SPARE)


def check_connection_budget(settings: Settings) -> None:
    """The one sizing rule: processes x (connections + 1) <= Slack's 10 per app."""
    need = connection_need(settings.processes, settings.connections)
    if need > SLACK_MAX_CONNECTIONS:
        raise ConfigError(
            f"{settings.processes} processes x ({settings.connections} connections + 1 spare for a refresh) "
            f"= {need}; Slack allows {SLACK_MAX_CONNECTIONS} per app"
        )


def template_text() -> tuple[str, str]:
    """The supervisord template and where it came from: ./deploy/ when an operator put one there,
    else the copy shipped inside the package."""
    operator = Path.cwd() / OPERATOR_TEMPLATE
    if operator.is_file():
        return operator.read_text(), str(operator)
    shipped = resources.files("buidl_edge.ops").joinpath("deploy", TEMPLATE_NAME)
    return shipped.read_text(), f"buidl_edge/ops/deploy/{TEMPLATE_NAME} (packaged)"


def check_socket_path(state_dir: Path) -> None:
    """supervisord's control socket lives in the state dir; Linux caps a unix socket path at 107
    bytes, and supervisord first binds `<socket>.<pid>`, so leave room for that suffix."""
    path = socket_path(state_dir)
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(f"BUIDL_STATE_DIR is too long for supervisord's control socket ({path} is "
                          f"{size} bytes, at most {MAX_SOCKET_PATH}): use a shorter path")


@dataclass(frozen=True)
class Credentials:
    """The control socket's username and password: fresh for every start, kept in the 0600 config."""

    username: str | None = None
    password: str | None = None

    @classmethod
    def fresh(cls) -> Credentials:
        return cls(f"run{secrets.token_hex(4)}", secrets.token_urlsafe(24))


def render_config(settings: Settings, credentials: Credentials | None = None) -> Path:
    """Write state_dir/supervisord.conf (0600, in a 0700 dir) from the template."""
    state_dir = settings.state_dir.resolve()
    check_socket_path(state_dir)
    private_dir(state_dir)
    credentials = credentials or Credentials.fresh()
    template, source = template_text()
    try:
        text = Template(template).substitute(
            state_dir=str(state_dir), python=sys.executable, processes=settings.processes,
            fatal_exit=EXIT_FATAL, stopwaitsecs=STOP_WAIT_S, uid=os.getuid(),
            username=credentials.username, password=credentials.password,
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{source}: unknown or malformed placeholder {exc}") from None
    return write_private(state_dir / CONF_NAME, text + watch_section(settings))


def watch_section(settings: Settings) -> str:
    """The plugin that makes supervisord `run`'s watch (stack_watch.py). Added here, not in the
    template, so that an operator's own template cannot leave it out."""
    lines = ["", "[rpcinterface:buidl_edge]",
             "supervisor.rpcinterface_factory = buidl_edge.ops.stack_watch:make_watch"]
    if settings.http_port is not None:
        lines += [f"http_host = {settings.http_host}", f"http_port = {settings.http_port}"]
    return "\n".join(lines) + "\n"


def read_credentials(state_dir: Path) -> Credentials:
    """The pair in the rendered config; none when there is no config (nothing runs there)."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(state_dir.resolve() / CONF_NAME)
    except configparser.Error:
        return Credentials()
    if not parser.has_section("unix_http_server"):
        return Credentials()
    section = parser["unix_http_server"]
    return Credentials(section.get("username"), section.get("password"))


# -- talking to a running supervisord ------------------------------------------------------------


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


def live_supervisor(state_dir: Path) -> int | None:
    """The pid of a supervisord that answers on this state dir's socket (0 if its pidfile is
    unreadable), or None: nothing listens there (no socket, or one left by a killed stack)."""
    sock = socket_path(state_dir)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(sock))
    except OSError:
        return None
    finally:
        probe.close()
    try:
        return int((state_dir.resolve() / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return 0


def _transport(sock: Path, credentials: Credentials) -> xmlrpc.client.Transport:
    """supervisor's own unix-socket transport, with a timeout so a stuck supervisord never hangs us."""
    from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

    class Connection(UnixStreamHTTPConnection):
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(RPC_TIMEOUT_S)

    def connect() -> Connection:
        connection = Connection("localhost")
        connection.socketfile = str(sock)
        return connection

    transport = SupervisorTransport(credentials.username, credentials.password, serverurl=f"unix://{sock}")
    transport._get_connection = connect
    return transport


class Supervisor:
    """XML-RPC to the supervisord of one state dir."""

    def __init__(self, state_dir: Path, credentials: Credentials | None = None) -> None:
        self.state_dir = state_dir
        self.sock = socket_path(state_dir)
        self.credentials = credentials if credentials is not None else read_credentials(state_dir)
        self._transport = _transport(self.sock, self.credentials)
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)

    def processes(self) -> list[ProcessInfo]:
        if not self.sock.exists():
            raise SupervisorDown(f"no supervisor is running for {self.state_dir} (no {self.sock.name})")
        try:
            # XML-RPC answers are typed as any marshallable value; supervisord's API documents this
            # one as a list of structs.
            infos = cast(list[dict[str, Any]], self._proxy.supervisor.getAllProcessInfo())
        except (OSError, xmlrpc.client.Error) as exc:
            self._transport.close()  # a broken keep-alive connection is not reused
            raise SupervisorDown(f"supervisor for {self.state_dir} does not answer: "
                                 f"{type(exc).__name__}") from None
        out = []
        for info in infos:
            if info.get("group") != "worker":
                continue
            running = info["statename"] == "RUNNING"
            out.append(ProcessInfo(name=info["name"], state=info["statename"], pid=info["pid"],
                                   uptime_s=float(info["now"] - info["start"]) if running else 0.0,
                                   exit_status=info.get("exitstatus", 0)))
        return out


def supervisor_processes(state_dir: Path) -> list[ProcessInfo]:
    return Supervisor(state_dir).processes()
