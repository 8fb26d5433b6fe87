"""What every command shares: the `buidl-edge` group with the CLI's one error boundary, the
options defined once, the settings of commands that never call Slack, and the admin store.

Nothing here imports more than click, the configuration and redaction (leaves that open no
socket) at load time, so that `worker` can patch the standard library for gevent before anything
opens a socket.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from buidl_edge.config import MAX_CONNECTIONS_PER_PROCESS, MAX_PROCESSES, ConfigError, Settings, load_settings
from buidl_edge.observability.redaction import one_line

if TYPE_CHECKING:
    from buidl_edge.store.base import EdgeStore

F = TypeVar("F", bound=Callable[..., Any])


def said(exc: BaseException) -> str | None:
    """How an error that a user's input or environment can cause is said, in one line; None for
    any other (a bug keeps its traceback). Imported only once one was raised, so that `worker`
    still patches gevent first."""
    from buidl_edge.api.app import AppError
    from buidl_edge.api.message import MessageError
    from buidl_edge.store.errors import StoreError
    from buidl_edge.webapi.client import RateLimited, SlackApiError, SlackUnreachable

    if isinstance(exc, RateLimited):
        return f"Slack rate-limited {exc.method}: retry after {exc.retry_after:g}s"
    if isinstance(exc, SlackUnreachable):  # no answer at all: Slack refused nothing
        return one_line(str(exc))
    if isinstance(exc, SlackApiError):
        return f"Slack refused: {one_line(str(exc))}"
    if isinstance(exc, MessageError):
        return f"not sent: {one_line(str(exc))}"
    if isinstance(exc, (ConfigError, StoreError, AppError)):
        return one_line(exc)
    return None


# Each command's module (in this package), imported only when that command runs or help lists
# them: a `worker` loads click and its own module, not the admin, sandbox or token commands (each
# module imported costs a long-lived process its memory: issue 26).
COMMAND_MODULES = {"status": "admin", "inbox": "admin", "outbox": "admin", "config": "checks", "check": "checks",
                   "run": "run", "worker": "run", "simulate": "sandbox", "demo": "sandbox", "send": "send",
                   "sim": "sim", "token": "tokens"}


class EdgeGroup(click.Group):
    """The CLI's one error boundary: an expected error from any command becomes `Error: <line>`.
    An error inside the user's app module shows the user's own frames first. Its commands load
    lazily (COMMAND_MODULES)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"{__package__}.{COMMAND_MODULES[cmd_name]}")  # registers it on `cli`
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            error = as_click_error(exc)
            if error is None:
                raise
            raise error from None


def as_click_error(exc: Exception) -> click.ClickException | None:
    """The one line the CLI says for an error a user's input or environment can cause (an error in
    the user's app module first shows where in it); None for a bug, which keeps its traceback."""
    line = said(exc)
    if line is None:
        return None
    details = getattr(exc, "details", None)  # AppError: where in the user's module
    if details:
        click.echo(details.rstrip("\n"), err=True)
    return click.ClickException(line)



def also_expects(kind: type[BaseException], prefix: str = "") -> Callable[[F], F]:
    """Let one command's `kind` errors (an OSError: a port taken, a file not writable) cross the
    boundary as one line too, after `prefix`."""
    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except kind as exc:
                raise click.ClickException(prefix + one_line(str(exc))) from None
        return run  # type: ignore[return-value]
    return decorate


# -- options shared by several commands ----------------------------------------------------------

def json_option(help: str = "Print JSON.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


app_option = click.option(
    "--app", "app_spec", default=None, metavar="MODULE:ATTR",
    help="Handler app (default BUIDL_APP or the Buidl bot); the working directory is on the import path.")
connections_option = click.option(
    "--connections", "-c", type=click.IntRange(1, MAX_CONNECTIONS_PER_PROCESS), default=None,
    help="Socket Mode connections per worker process (default BUIDL_CONNECTIONS or 1); "
         "each process keeps one more for a refresh.")
processes_option = click.option(
    "--processes", "-n", type=click.IntRange(1, MAX_PROCESSES), default=None,
    help="Worker processes (default BUIDL_PROCESSES or 2).")
relay_option = click.option(
    "--relay", "relay_url", default=None, metavar="URL",
    help="Relay mode: post every envelope, signed with SLACK_SIGNING_SECRET, to the HTTP-mode Slack app at "
         "URL (its Request URL) instead of running an EdgeApp (default BUIDL_RELAY_URL).")
limit_option = click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)


def state_option(*states: str) -> Callable[[F], F]:
    return click.option("--state", type=click.Choice(list(states)), default=None, help="Only rows in this state.")


# -- settings and the store ----------------------------------------------------------------------

def state_settings() -> Settings:
    """Settings for commands that never call Slack: a missing token is not an error there."""
    return load_settings(require_tokens=False)


@contextlib.contextmanager
def admin_store(settings: Settings | None = None) -> Iterator[EdgeStore]:
    """The store the workers use, never a new one (a missing store is one line, exit 1), closed
    whatever the command does with it."""
    from buidl_edge.store import open_store

    store = open_store(settings or state_settings(), threaded=False, create=False)
    try:
        yield store
    finally:
        store.close()


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """buidl-edge: the Slack Socket Mode edge of Buidl.

    Tokens come from SLACK_APP_TOKEN (xapp-) and SLACK_BOT_TOKEN (xoxb-),
    or from the files `buidl-edge token set` writes.
    Try `buidl-edge demo` to see it work against the bundled simulator.
    """
