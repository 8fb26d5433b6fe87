"""The cyclic garbage collector, set for a worker once it is up.

A worker's live set is its start-up heap (modules, the app, gevent, sqlite3: a few hundred
thousand objects that live as long as the process) plus the objects of the envelopes in flight,
which come and go by the hundred. With CPython's defaults (a young collection every 700 net
allocations) the in-flight objects trip a young collection every few dozen envelopes, survivors
get promoted, and every full collection walks the whole start-up heap again (~20 ms each: a
stall of the hub, so of every ack). Profiled with gc.callbacks in a worker at full throughput
(BENCHMARKS.md): ~10 % of its CPU went to the collector.

So, once start-up is over: collect what start-up left, freeze the survivors (full collections no
longer walk them), and let the young generation hold more than one burst's objects. Reference
cycles are still collected, only less often; what waits is at most GEN0_THRESHOLD objects.
"""
from __future__ import annotations

import gc

# Net allocations between young collections: more than the objects of a few hundred envelopes in
# flight, so a steady load does not trip one per burst.
GEN0_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once, when the worker is up: what is alive now lives as long as the process."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
