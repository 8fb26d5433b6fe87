"""Modules a configuration does not use are not imported (issue 26): a worker keeps every module
it imported for the whole life of the process, so an import it never needed is RSS for good.

The probe is a real worker process on the simulator, started as `run` starts each (`python -m
buidl_edge worker`, no flags) with a SQLite store, no Sentry DSN, no proxy, no relay and no Bolt
app. Its app module registers an atexit hook that prints what is loaded, so the list covers the
whole start-up, one envelope handled with a reply posted, and the drain.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from buidl_edge.sandbox.harness import WorkerProcess, wait_until, worker_env
from buidl_edge.sandbox.simulator.client import SimulatorProcess
from stack_support import PROJECT_ROOT
from support import keys, wait_idle

# Each with the configuration (or the call) that would load it; none applies to this worker.
NOT_FOR_THIS_CONFIG = {
    "sentry_sdk": "a Sentry DSN",
    "prometheus_client": "BUIDL_HTTP_PORT",
    "redis": "a Redis store",
    "slack_bolt": "a Bolt app",
    "slack_sdk": "a handler's ctx.client",
    "click": "a worker started with flags",
    "buidl_edge.relay": "the relay",
    "buidl_edge.sandbox": "the simulator",
    "difflib": "an app spec naming a missing attribute (the hint)",
    "uuid": "random keys, which os.urandom makes as well",
}

PROBE_APP = """\
import atexit
import sys

from buidl_edge import EdgeApp

app = EdgeApp("probe")


@app.message("hello")
def hello(payload, ctx):
    ctx.say("hi")


def _say_loaded():
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in WATCHED or name in WATCHED)
    print("loaded at exit:", ",".join(loaded) or "-", flush=True)


WATCHED = set({watched!r})
atexit.register(_say_loaded)
"""


def test_a_sqlite_worker_without_dsn_or_proxy_imports_nothing_it_does_not_use(
        fresh_simulator: SimulatorProcess, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "probe_app.py").write_text(PROBE_APP.format(watched=sorted(NOT_FOR_THIS_CONFIG)))
    env = worker_env(fresh_simulator.api_url, BUIDL_APP="probe_app:app", BUIDL_STATE_DIR=tmp_path / "state",
                     PYTHONPATH=os.pathsep.join([str(app_dir), str(PROJECT_ROOT)]))
    for name in ("SENTRY_DSN", "BUIDL_HTTP_PORT", "HTTPS_PROXY", "https_proxy", "BUIDL_STORE_URL"):
        env.pop(name, None)
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        sim = fresh_simulator.client
        sim.wait_for(lambda s: s["open_connections"] >= 1, 20, "the worker's link")
        keys(sim.inject("message", channel="C0LEAN", text="hello"))
        state = wait_idle(sim, env)
        assert [m.get("text") for m in state["messages"]] == ["hi"], state["messages"]  # handled, replied
    finally:
        code = worker.stop()
    wait_until(lambda: "loaded at exit:" in worker.output(), 10, "the probe's line at exit")
    line = next(text for text in worker.output().splitlines() if text.startswith("loaded at exit:"))
    loaded = [name for name in line.partition(":")[2].strip().split(",") if name and name != "-"]
    unused = {name.partition(".")[0] if not name.startswith("buidl_edge.") else ".".join(name.split(".")[:2])
              for name in loaded}
    assert not unused, ("imported though this configuration does not use them: "
                        + "; ".join(f"{name} (needs {NOT_FOR_THIS_CONFIG.get(name, '?')})" for name in sorted(unused)))
    assert code == 0, worker.output()


def test_supervisords_logging_loads_neither_the_settings_nor_dataclasses() -> None:
    """`run`'s own process (supervisord and its watch) takes from config only what its log lines
    need (`log_options`, `process_name`): config's names load with their module on first use, and
    that module holds no dataclass, so the watch keeps neither the worker's settings nor
    dataclasses, inspect and ast (about 1.1 MB of supervisord's RSS)."""
    probe = ("import sys\n"
             "from buidl_edge.config import log_options\n"
             "from buidl_edge.observability.logs import setup_logging\n"
             "import buidl_edge.ops.stack_watch\n"
             "setup_logging(*log_options())\n"
             "print(sorted(m for m in ('dataclasses', 'inspect', 'buidl_edge.config.settings') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30,
                            cwd=PROJECT_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"loaded for log lines alone: {result.stdout.strip()}"


def test_config_exports_exactly_what_it_says_it_does() -> None:
    """Each name in config's __all__ has a home module it loads from, and is found there."""
    import buidl_edge.config as config

    assert sorted(config.__all__) == sorted(config._HOMES)
    for name in config.__all__:
        home = importlib.import_module(f"buidl_edge.config.{config._HOMES[name]}")
        assert getattr(config, name) is getattr(home, name), name
