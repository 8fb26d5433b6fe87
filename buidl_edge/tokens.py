"""Token files behind `buidl-edge token set/show/rm`.

The app token lives in `~/.buidl/token` (the name Buidl's earlier client used),
the bot token in `~/.buidl/bot_token`; BUIDL_HOME moves both. The directory is
0700 and each file 0600 from the moment it exists: it is written to a private
temporary file (mkstemp makes it 0600) and renamed into place, so no reader
ever sees a half-written or briefly world-readable token. Reading, with its
refusal of files group or others can open, is `config.read_token_file`, so
`load_settings` needs nothing from here. The environment always wins.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from buidl_edge.config import (
    ConfigError,
    Secret,
    buidl_home,
    check_token_format,
    read_token_file,
    token_file,
)

# kind -> (environment variable, prefix, description)
KINDS: dict[str, tuple[str, str, str]] = {
    "app": ("SLACK_APP_TOKEN", "xapp-", "an app-level token"),
    "bot": ("SLACK_BOT_TOKEN", "xoxb-", "a bot token"),
}


def variable(kind: str) -> str:
    return KINDS[kind][0]


def path_for(kind: str, env: Mapping[str, str] | None = None) -> Path:
    return token_file(variable(kind), env)


def check(kind: str, raw: str, source: str = "the token given") -> str:
    """The token stripped of surrounding whitespace, or a ConfigError that never echoes it."""
    _, prefix, what = KINDS[kind]
    token = raw.strip()
    if not token:
        raise ConfigError(f"{source} is empty: expected {what} starting with {prefix}")
    check_token_format(token, prefix, what, source)
    return token


def save(kind: str, raw: str, env: Mapping[str, str] | None = None) -> Path:
    """Check and store a token; returns the file it went to."""
    token = check(kind, raw)
    home = buidl_home(env)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = home.stat()
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.getuid():
        os.chmod(home, 0o700)
    target = path_for(kind, env)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=f".{target.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(home)
    return target


def remove(kind: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Delete the token file; the path when there was one, None otherwise."""
    target = path_for(kind, env)
    try:
        target.unlink()
    except FileNotFoundError:
        return None
    return target


@dataclass(frozen=True)
class TokenStatus:
    kind: str
    source: str | None  # the variable or file the token comes from; None when unset
    masked: str | None  # type and last four characters
    problem: str | None = None  # why the file cannot be used
    shadowed: Path | None = None  # a file the environment overrides

    def line(self) -> str:
        if self.problem:
            return f"{self.kind}  refused: {self.problem}"
        if self.masked is None:
            return f"{self.kind}  not set (no {variable(self.kind)}, no file {self.shadowed})"
        note = f" (overrides {self.shadowed})" if self.shadowed else ""
        return f"{self.kind}  {self.masked}  from {self.source}{note}"


def status(kind: str, env: Mapping[str, str] | None = None) -> TokenStatus:
    """Where the token a worker would use comes from, masked: what `token show` prints."""
    env = os.environ if env is None else env
    name = variable(kind)
    path = path_for(kind, env)
    from_env = (env.get(name) or "").strip()
    if from_env:
        return TokenStatus(kind, name, Secret(from_env).masked(), shadowed=path if path.exists() else None)
    try:
        stored = read_token_file(path)
    except ConfigError as exc:
        return TokenStatus(kind, str(path), None, problem=str(exc))
    if not stored:
        return TokenStatus(kind, None, None, shadowed=path)
    return TokenStatus(kind, str(path), Secret(stored).masked())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
