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

# How a live worker shows it is alive, written only when it must be. Every RENEWAL_TURN_S its chores
# renew what it holds (its envelopes' leases, if it holds any; its connection slots) and refresh its
# heartbeat if nothing else made it write one. A lease lasts three turns (BUIDL_LEASE_S, 30 s by
# default; slots SLOT_TTL_S), so two renewals can fail before anyone may take over. A heartbeat is
# also written within HEARTBEAT_CHECK_S of any change of what it reports; one older than
# STALE_AFTER_S (two turns and a half) is a worker gone quiet (`status`, the dyno's /readyz).
RENEWAL_TURN_S = 10.0
HEARTBEAT_CHECK_S = 2.0
STALE_AFTER_S = 2.5 * RENEWAL_TURN_S


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
