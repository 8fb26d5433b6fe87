"""What buidl-edge adds around a Bolt app's dispatch, in process: CPU per envelope, no sockets.

    .venv/bin/python scripts/bench_bolt_target.py             # 20,000 envelopes, bursts of 20, 3 runs
    .venv/bin/python scripts/bench_bolt_target.py --count 5000 --burst 1

One gevent-patched process, as a worker is, with the bench's Bolt app (scripts/bolt_bench_app.py;
its client, and App()'s auth.test, aimed at a simulator started for it). Three measurements of
message events like the simulator's, each in CPU µs per envelope (time.process_time):

- `App.dispatch` alone: Bolt's own cost (a BoltRequest built and dispatched, the listener called
  inline through a synchronous executor), which Bolt's SocketModeHandler pays too;
- the Bolt target: the dispatcher's ack path (memory store) with the app as its target, from the
  burst handed in to every envelope finished;
- the EdgeApp target: the same, with scripts/edge_apps.py's no-op handler, for reference.

The difference between the second and the first is buidl-edge's part. Also the cyclic collector's
time in each (gc.callbacks), and how many collections ran.
"""
from __future__ import annotations

from buidl_edge.runtime.gevent_patch import patch

patch()

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import Executor, Future  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from buidl_edge.bolt.request import bolt_request  # noqa: E402
from buidl_edge.dispatch.dispatcher import Dispatcher  # noqa: E402
from buidl_edge.runtime.gc_tuning import settle_heap  # noqa: E402
from buidl_edge.sandbox.harness import fake_tokens  # noqa: E402
from buidl_edge.sandbox.simulator.client import SimulatorProcess  # noqa: E402
from buidl_edge.socketmode.link import Ack  # noqa: E402
from buidl_edge.socketmode.protocol import Envelope  # noqa: E402
from buidl_edge.store.memory import MemoryStore  # noqa: E402


class Acks:
    """The link's side of the ack path: counts what comes back later."""

    connection = "bench"

    def __init__(self) -> None:
        self.later = 0

    def put(self, ack: Ack) -> bool:
        self.later += 1
        return True


class Inline(Executor):
    """Bolt's listener executor, synchronous: App.dispatch measured with its listener, no threads."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class Collector:
    """The cyclic collector's time and collections while measuring."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1


def envelopes(count: int, offset: int) -> list[Envelope]:
    out = []
    for i in range(offset, offset + count):
        event = {"type": "message", "channel": "C0GENERAL", "user": "U0HUMAN", "text": f"load {i}",
                 "ts": f"1796591572.{i:06d}", "channel_type": "channel"}
        payload = {"token": "sim-verification", "team_id": "T0SIM", "api_app_id": "A0SIM", "event": event,
                   "type": "event_callback", "event_id": f"Ev{i:010d}", "event_time": 1796591572}
        out.append(Envelope(type="events_api", envelope_id=f"env-{i}", payload=payload))
    return out


def measure(run: Callable[[list[Envelope]], None], count: int, offset: int) -> tuple[float, Collector]:
    batch = envelopes(count, offset)
    collector = Collector()
    gc.callbacks.append(collector)
    try:
        started = time.process_time()
        run(batch)
        spent = time.process_time() - started
    finally:
        gc.callbacks.remove(collector)
    return spent * 1e6 / count, collector


def dispatch_alone(app: Any) -> Callable[[list[Envelope]], None]:
    def run(batch: list[Envelope]) -> None:
        for envelope in batch:
            app.dispatch(bolt_request(envelope))
    return run


def through_dispatcher(dispatcher: Dispatcher, burst: int) -> Callable[[list[Envelope]], None]:
    acks = Acks()

    def run(batch: list[Envelope]) -> None:
        handled = dispatcher.stats.handled
        for start in range(0, len(batch), burst):
            now = time.monotonic()
            part = batch[start:start + burst]
            dispatcher.accept([(envelope, now) for envelope in part], acks)
            handled += len(part)
            while dispatcher.stats.handled < handled:  # a steady load, below what it can take
                gevent.sleep(0)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=20, help="envelopes per read (the bench's 3,000/s: ~20)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=None, help="one case: alone, bolt or edge (e.g. under py-spy)")
    cfg = parser.parse_args()
    with SimulatorProcess() as sim:
        os.environ.update(fake_tokens(), SLACK_API_URL=sim.api_url)  # bolt_bench_app reads them
        import bolt_bench_app
        import edge_apps
        from buidl_edge.bolt.target import BoltTarget

        bolt_app = bolt_bench_app.app
        bolt_dispatcher = Dispatcher(edge_apps.bench, MemoryStore(), None, "bench", 2.5, None,
                                     make_target=lambda hooks: BoltTarget(bolt_app, hooks, 200))
        bolt_executor = bolt_app.listener_runner.listener_executor  # the target's, put in by install()
        edge_dispatcher = Dispatcher(edge_apps.bench, MemoryStore(), None, "bench", 2.5, None)
        cases: dict[str, Callable[[list[Envelope]], None]] = {
            "App.dispatch alone": dispatch_alone(bolt_app),
            "Bolt target": through_dispatcher(bolt_dispatcher, cfg.burst),
            "EdgeApp target": through_dispatcher(edge_dispatcher, cfg.burst),
        }
        if cfg.only:
            cases = {name: run for name, run in cases.items() if name.lower().startswith(
                {"alone": "app.dispatch", "bolt": "bolt", "edge": "edgeapp"}[cfg.only])}
        # Warm every path, then freeze the heap as a worker does once it is up.
        for name, run in cases.items():
            swap(bolt_app, name, bolt_executor)
            run(envelopes(500, 0))
        settle_heap()
        results: dict[str, list[tuple[float, Collector]]] = {name: [] for name in cases}
        offset = 1_000
        for _ in range(cfg.runs):
            for name, run in cases.items():
                swap(bolt_app, name, bolt_executor)
                results[name].append(measure(run, cfg.count, offset))
                offset += cfg.count
    print(f"{cfg.count} envelopes per run, bursts of {cfg.burst}, {cfg.runs} runs (median; gc: collections "
          "gen0/1/2 and their CPU per envelope)")
    for name, rows in results.items():
        median = statistics.median(us for us, _ in rows)
        collector = rows[len(rows) // 2][1]
        print(f"  {name:20} {median:7.1f} µs/envelope   runs {' / '.join(f'{us:.1f}' for us, _ in rows)}   "
              f"gc {'/'.join(map(str, collector.collections))}, {collector.seconds * 1e6 / cfg.count:.1f} µs")
    return 0


def swap(app: Any, case: str, executor: Executor) -> None:
    """App.dispatch alone calls the listener inline; the Bolt target's runs use its own executor."""
    app.listener_runner.listener_executor = Inline() if case == "App.dispatch alone" else executor


if __name__ == "__main__":
    sys.exit(main())
