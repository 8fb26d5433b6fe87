"""Where a new envelope goes once it is claimed: the one interface the ack path hands work to.

The targets are the EdgeApp handlers (dispatch/handlers.py), the relay to an HTTP-mode app
(relay/target.py) and a Bolt app run in-process (bolt/target.py). A target never blocks the ack
path: what waits (a handler, the app's answer) runs on a greenlet of its own, and the ack path
waits for an `Answer` only up to the ack deadline.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from buidl_edge.dispatch.stats import DispatchStats
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply

Payload = dict[str, Any] | None
ClaimKey = Callable[[str], bool]
Finish = Callable[[str, list[Reply], "str | None"], bool]


@dataclass(frozen=True)
class TargetHooks:
    """What the dispatcher gives a target that runs the app's code in this process: the store's
    calls through its failover (`claim_key` for once-only keys, `finish` for an envelope done, with
    its replies and error), the counters `status` shows, and whether the store dies with the process
    (memory), as a drain's warning says."""

    claim_key: ClaimKey
    finish: Finish
    stats: DispatchStats
    lost_with_process: bool


class Answer(Protocol):
    """The target's answer for an envelope's ack, once it comes."""

    @property
    def value(self) -> Payload: ...

    def wait(self, timeout: float) -> bool:
        """True once `value` is set (within `timeout` seconds)."""


class Target(Protocol):
    def answers(self, envelope: Envelope) -> bool:
        """Whether an answer may ride on this envelope's ack (so the ack waits for it, up to the
        deadline); cheap, no I/O."""

    def start(self, envelope: Envelope, connection: str | None, received_at: float | None) -> Answer | None:
        """Begin handling a new envelope; never blocks. `received_at` (monotonic) is given when an
        answer is wanted for the ack: then the Answer to wait for, or None when none can come in
        time (the ack goes plain). None for `received_at`: the envelope was acked already."""

    def rerun(self, envelope: Envelope) -> None:
        """Handle an envelope the sweep took over (acked long ago, by a worker gone)."""

    def drain(self, timeout: float) -> bool:
        """Finish what was started; False (said at warning) when time ran out."""

    def describe(self, greenlet: Any) -> tuple[str, dict[str, Any]] | None:
        """What a greenlet is running, if it is this target's (the hub watch names it)."""

    def stats(self) -> dict[str, Any]: ...


class GreenletAnswer:
    """An `Answer` computed by a greenlet (its return value)."""

    __slots__ = ("_greenlet",)

    def __init__(self, greenlet: Any) -> None:
        self._greenlet = greenlet

    def wait(self, timeout: float) -> bool:
        self._greenlet.join(timeout=timeout)
        return bool(self._greenlet.ready())

    @property
    def value(self) -> Payload:
        return self._greenlet.value if self._greenlet.successful() else None
