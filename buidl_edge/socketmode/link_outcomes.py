"""How a Socket Mode link ended, and what each ending asks of its connection slot.

As supervisor's states.py does for process states, this module holds the outcomes as
constants with named groups and imports nothing of ours, so any module may name them.
Every outcome is in exactly one of RECONNECT_AT_ONCE, BACK_OFF and STOP_FOR_GOOD.
"""
from enum import StrEnum


class LinkOutcome(StrEnum):
    """What ended (or must end) a link. The values are the reasons `link_ends` counts by."""

    CLOSED = "closed"  # the socket closed or broke: Slack, the network, or our own teardown
    REFRESH = "refresh"  # disconnect warning/refresh_requested, or the link's life is nearly over
    STALE = "stale"  # no traffic or pong within the stale timeout: half-open
    FATAL = "fatal"  # disconnect link_disabled: Socket Mode is off for the app
    TOO_MANY = "too_many"  # disconnect too_many_websockets
    STOP = "stop"  # this worker drains
    SLOT_LOST = "slot_lost"  # the store gave this connection's slot lease to another holder


# The replacement opens first while the old link reads on and retires.
REPLACE_FIRST = frozenset({LinkOutcome.REFRESH, LinkOutcome.STALE})
# A healthy ending: the slot reconnects without waiting (or, for STOP, ends its loop).
RECONNECT_AT_ONCE = frozenset({LinkOutcome.REFRESH, LinkOutcome.STALE, LinkOutcome.STOP})
# A failure, or being told to make room: the slot waits a jittered backoff before the next link.
BACK_OFF = frozenset({LinkOutcome.CLOSED, LinkOutcome.TOO_MANY, LinkOutcome.SLOT_LOST})
# No reconnect can help: the worker stops for good.
STOP_FOR_GOOD = frozenset({LinkOutcome.FATAL})
