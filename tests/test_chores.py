"""The chores' one timer: chores whose intervals divide one another share its wake-ups, even when a
wake comes a little late or a little early (a loop's cached time, a busy hub), as it always does."""
from __future__ import annotations

from buidl_edge.runtime.chores import Chore, Chores
from buidl_edge.store.health import StoreHealth

# How far from its due time the timer's wake may fall, each way (a late hub, a cached loop time).
JITTER_S = (0.004, -0.001, 0.002, 0.0005, 0.003)


def test_chores_of_2_s_and_10_s_share_the_2_s_wake_ups_when_the_wakes_come_off_time() -> None:
    now = 100.0
    ran: list[tuple[str, float]] = []
    chores = Chores([Chore(name, interval, lambda name=name: ran.append((name, now)))  # type: ignore[misc]
                     for name, interval in (("check", 2.0), ("renewal", 10.0))], StoreHealth(),
                    clock=lambda: now)
    next_at = chores.run_due()
    while next_at < 200.0:  # 100 s of the timer's loop: sleep until next_at, wake a little off it
        now = next_at + JITTER_S[chores.rounds % len(JITTER_S)]
        next_at = chores.run_due()
    renewals = [name for name, _ in ran].count("renewal")
    assert renewals >= 10, f"{renewals} renewals in 100 s (one each 10 s)"
    assert chores.rounds <= 51, f"{chores.rounds} wake-ups of the timer in 100 s for chores of 2 s and 10 s (one a 2 s)"
