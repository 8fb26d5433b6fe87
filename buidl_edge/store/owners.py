"""Who holds what: parsing worker owner names and telling a dead local process.

An owner is `host:pid` (see `Worker.owner`). Every backend uses the same rule
to take work from a process that is gone: a same-host owner whose pid no
longer exists is dead at once; an owner on another host (another dyno) can only
be judged by its lease running out. Pure functions, no I/O beyond `kill(pid, 0)`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int | None

    @classmethod
    def parse(cls, owner: str) -> Owner:
        host, _, pid = owner.rpartition(":")
        return cls(host, int(pid) if pid.isdigit() else None)


def pid_alive(pid: int) -> bool:
    """Signal 0 probes without touching the process; EPERM means it exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead_local(owner: str, host: str) -> bool:
    """True only for an owner on `host` whose process is gone; anything else may be alive."""
    parsed = Owner.parse(owner)
    return parsed.host == host and parsed.pid is not None and not pid_alive(parsed.pid)


def holder_owner(holder: str) -> str:
    """The owner part of a connection slot holder, `host:pid/c0` → `host:pid`."""
    return holder.split("/", 1)[0]


def alive_here(pid: int) -> bool:
    """A process of this host that still runs: one killed but not yet reaped (a zombie, as a
    SIGKILLed tree leaves until init collects it) is dead."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(pid, 0) is all we know
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0] != "Z"


def dead_here(owner: str, here: str) -> bool:
    """True only for an owner (`host:pid`) on this host whose process is gone."""
    parsed = Owner.parse(owner)
    return parsed.host == here and parsed.pid is not None and not alive_here(parsed.pid)
