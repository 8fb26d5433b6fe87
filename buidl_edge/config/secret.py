"""Slack tokens: where they come from (the environment, else a file under BUIDL_HOME), their
shape, and `Secret`, which prints as its type and last four characters, never whole.

Writing the token files is `buidl_edge.ops.tokens` (`buidl-edge token set/rm`); reading them,
with the refusal of a file group or others can open, is here, so that loading the settings
needs nothing else.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buidl_edge.config.env import ConfigError, environ


class Secret:
    """A token that prints as its type and last four characters, never whole."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def kind(self) -> str:
        return self._value.split("-", 1)[0] if "-" in self._value else "unknown"

    def masked(self) -> str:
        return f"{self.kind}-…{self._value[-4:]}" if len(self._value) > 12 else f"{self.kind}-…"

    def __repr__(self) -> str:
        return f"Secret({self.masked()})"

    __str__ = masked

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @property
    def problem(self) -> str | None:
        """Why this token cannot be used, or None: it can."""
        return None


class MissingSecret(Secret):
    """A token that is not set (or not usable), for commands that never call Slack (`config`,
    `status`, `inbox` …): the settings load, and using the token raises its one-line reason."""

    __slots__ = ("_problem",)

    def __init__(self, problem: str) -> None:
        super().__init__("")
        self._problem = problem

    @property
    def problem(self) -> str:
        return self._problem

    def reveal(self) -> str:
        raise ConfigError(self._problem)

    def masked(self) -> str:
        return "(not usable)"

    def __repr__(self) -> str:
        return "MissingSecret()"

    __str__ = masked


@dataclass(frozen=True)
class TokenKind:
    variable: str  # the environment variable, which wins over the file
    prefix: str
    what: str  # how an error names it
    file_name: str  # under BUIDL_HOME; `token` is the name Buidl's earlier client used
    flag: str  # `buidl-edge token set --app/--bot`


TOKEN_KINDS: dict[str, TokenKind] = {
    "app": TokenKind("SLACK_APP_TOKEN", "xapp-", "an app-level token", "token", "--app"),
    "bot": TokenKind("SLACK_BOT_TOKEN", "xoxb-", "a bot token", "bot_token", "--bot"),
}

_PREFIXES = {"xapp-": "an app-level token (xapp-)", "xoxb-": "a bot token (xoxb-)",
             "xoxp-": "a user token (xoxp-)"}
# A Slack token is a prefix and dashes/alphanumerics; quotes, spaces or a second token pasted
# along are caught on load rather than as invalid_auth later.
_TOKEN_BODY = re.compile(r"[A-Za-z0-9-]+")


def check_token_format(raw: str, prefix: str, what: str, source: str) -> None:
    """Raise a ConfigError naming `source` (a variable or a file) and what was found, never the value."""
    if not raw.startswith(prefix):
        found = next((desc for p, desc in _PREFIXES.items() if raw.startswith(p)), "not a Slack token")
        raise ConfigError(f"{source} must start with {prefix} ({what}); the value given is {found}")
    if not _TOKEN_BODY.fullmatch(raw[len(prefix):]):
        raise ConfigError(f"{source} holds {prefix}… followed by characters no Slack token has "
                          "(spaces, quotes or a second value?)")


@dataclass(frozen=True)
class TokenSource:
    """Where the token of one kind comes from: `value` is empty when it is set nowhere."""

    value: str
    source: str | None  # the variable or the file it was read from
    path: Path  # its file, whether or not that is where it came from

    @property
    def from_environment(self) -> bool:
        return self.source is not None and self.source != str(self.path)


def token_source(kind: str, env: Mapping[str, str] | None = None) -> TokenSource:
    """The token from the environment, else from its file (a ConfigError for a file refused)."""
    env = environ(env)
    spec = TOKEN_KINDS[kind]
    path = token_file(kind, env)
    raw = (env.get(spec.variable) or "").strip()
    if raw:
        return TokenSource(raw, spec.variable, path)
    stored = (read_token_file(path) or "").strip()
    return TokenSource(stored, str(path) if stored else None, path)


def load_token(kind: str, env: Mapping[str, str]) -> Secret:
    """The token of `kind`, checked; a ConfigError that says how to set it when it is missing."""
    spec = TOKEN_KINDS[kind]
    found = token_source(kind, env)
    if found.source is None:
        raise ConfigError(f"{spec.variable} is not set: it must be {spec.what} starting with {spec.prefix} "
                          f"(or store one with `buidl-edge token set {spec.flag}`)")
    check_token_format(found.value, spec.prefix, spec.what, found.source)
    return Secret(found.value)


def buidl_home(env: Mapping[str, str] | None = None) -> Path:
    """BUIDL_HOME, else ~/.buidl."""
    env = environ(env)
    if env.get("BUIDL_HOME"):
        return Path(env["BUIDL_HOME"]).expanduser()
    return (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".buidl"


def token_file(kind: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the token of `kind` (app or bot) is stored."""
    return buidl_home(env) / TOKEN_KINDS[kind].file_name


def read_token_file(path: Path) -> str | None:
    """The stored token, or None without a file. A file group or others can open is refused."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path} is open to group or others (mode {mode:o}); refusing to use it. "
                              f"Fix it with: chmod 600 {path}")
        return fh.read(4096).strip()
