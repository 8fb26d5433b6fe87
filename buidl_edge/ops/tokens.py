"""Token files behind `buidl-edge token set/show/rm`.

The app token lives in `~/.buidl/token` (the name Buidl's earlier client used),
the bot token in `~/.buidl/bot_token`; BUIDL_HOME moves both. The directory is
0700 and each file 0600 from the moment it exists: it is written to a private
temporary file (mkstemp makes it 0600) and renamed into place, so no reader
ever sees a half-written or briefly world-readable token. Reading, with its
refusal of files group or others can open, is `config.token_source`, so
`load_settings` needs nothing from here. The environment always wins.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buidl_edge.config import (
    TOKEN_KINDS,
    ConfigError,
    Secret,
    buidl_home,
    check_token_format,
    token_file,
    token_source,
)


def check(kind: str, raw: str, source: str = "the token given") -> str:
    """The token stripped of surrounding whitespace, or a ConfigError that never echoes it."""
    spec = TOKEN_KINDS[kind]
    token = raw.strip()
    if not token:
        raise ConfigError(f"{source} is empty: expected {spec.what} starting with {spec.prefix}")
    check_token_format(token, spec.prefix, spec.what, source)
    return token


def save(kind: str, raw: str, env: Mapping[str, str] | None = None) -> Path:
    """Check and store a token; returns the file it went to."""
    token = check(kind, raw)
    home = buidl_home(env)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = home.stat()
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.getuid():
        os.chmod(home, 0o700)
    target = token_file(kind, env)
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
    target = token_file(kind, env)
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
            return f"{self.kind}  not set (no {TOKEN_KINDS[self.kind].variable}, no file {self.shadowed})"
        note = f" (overrides {self.shadowed})" if self.shadowed else ""
        return f"{self.kind}  {self.masked}  from {self.source}{note}"


def status(kind: str, env: Mapping[str, str] | None = None) -> TokenStatus:
    """Where the token a worker would use comes from, masked: what `token show` prints."""
    try:
        found = token_source(kind, env)
    except ConfigError as exc:  # the file is refused
        return TokenStatus(kind, str(token_file(kind, env)), None, problem=str(exc))
    if found.from_environment:
        return TokenStatus(kind, found.source, Secret(found.value).masked(),
                           shadowed=found.path if found.path.exists() else None)
    if found.source is None:
        return TokenStatus(kind, None, None, shadowed=found.path)
    return TokenStatus(kind, found.source, Secret(found.value).masked())


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
