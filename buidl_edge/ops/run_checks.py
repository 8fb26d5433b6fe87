"""What `run` refuses before it starts anything, and what its workers refuse when they start: one
list of named checks, so that `run` refuses, `check` finds and `config` flags the same settings
with the same one line.
"""
from __future__ import annotations

from collections.abc import Callable

from buidl_edge.config import ConfigError, OutboxConfig, Settings
from buidl_edge.ops.statefiles import unusable_dir
from buidl_edge.ops.supervise import check_connection_budget, check_socket_path

Check = Callable[[Settings], None]


def check_state_dir(settings: Settings) -> None:
    """supervisord's config and control socket, and the SQLite store, live there: it must be a
    directory this user can make and write (not under a file, not /proc, not a read-only mount)."""
    problem = unusable_dir(settings.state_dir)  # first: a dir that cannot exist makes its length moot
    if problem:
        raise ConfigError(f"the state dir {settings.state_dir} cannot be used: {problem} "
                          "(set BUIDL_STATE_DIR to a directory this user can write)")
    check_socket_path(settings.state_dir)


def check_health_store(settings: Settings) -> None:
    if settings.http_port is not None and (settings.store_url or "").startswith("memory://"):
        raise ConfigError("BUIDL_HTTP_PORT under `run` reads the workers' heartbeats from the shared store; "
                          "with BUIDL_STORE_URL=memory:// there is none (run `worker` alone to serve its own)")


def check_outbox(settings: Settings) -> None:
    """The reply sender's BUIDL_POST_* settings, which each worker reads when it starts."""
    OutboxConfig.from_env()


# setting -> its check, in the order `run` tries them, before anything starts.
STACK_CHECKS: tuple[tuple[str, Check], ...] = (
    ("processes", check_connection_budget), ("state_dir", check_state_dir), ("http_port", check_health_store))
# What every worker refuses at start; under `run` the stack then stops for good with that reason.
WORKER_CHECKS: tuple[tuple[str, Check], ...] = (("outbox", check_outbox),)


def check_stack(settings: Settings) -> None:
    """Raise the first ConfigError `run` would stop at."""
    for _, check in STACK_CHECKS:
        check(settings)


def check_everything(settings: Settings) -> None:
    """Raise the first ConfigError that `run` or one of its workers would stop at."""
    for _, check in STACK_CHECKS + WORKER_CHECKS:
        check(settings)


def refusals(settings: Settings) -> dict[str, str]:
    """setting -> why `run` would refuse it, for every one it would (tokens included); empty when
    none. Loaded with `require_tokens=False`, a token that cannot be used is one of them."""
    found = dict(settings.token_problems())
    for name, check in STACK_CHECKS + WORKER_CHECKS:
        try:
            check(settings)
        except ConfigError as exc:
            found[name] = str(exc)
    return found
