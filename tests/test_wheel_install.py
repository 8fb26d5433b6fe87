"""Packaging for real: build the wheel, install it into a fresh venv (dependencies resolved by pip,
from its cache), and run `buidl-edge check` and `buidl-edge run` from a directory that is not
a checkout, against the simulator. Nothing of the checkout is on the path of those processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buidl_edge.sandbox.harness import fake_tokens, wait_until
from stack_support import PROJECT_ROOT, session_pids

pytestmark = pytest.mark.timeout(240)

TEMPLATE_IN_WHEEL = "buidl_edge/ops/deploy/supervisord.conf.tmpl"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with the freshly built wheel installed; yields its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "buidl_edge", source / "buidl_edge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    pip_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=180, env=pip_env)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("buidl_edge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert TEMPLATE_IN_WHEEL in archive.namelist()

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=180, env=pip_env)
    assert install.returncode == 0, install.stdout + install.stderr
    yield venv / "bin"


def test_the_installed_wheel_checks_and_runs_the_stack_from_an_unrelated_directory(installed: Path,
                                                                                  fresh_simulator) -> None:
    sim = fresh_simulator
    # A short state dir (unix socket paths are capped), a working dir with no deploy/ in it.
    state_dir = Path(tempfile.mkdtemp(prefix="be-whl-"))
    elsewhere = Path(tempfile.mkdtemp(prefix="be-whl-cwd-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_", "PYTHON"))}
    env.update(fake_tokens(), SLACK_API_URL=sim.api_url, BUIDL_STATE_DIR=str(state_dir), BUIDL_BACKOFF_BASE="0.2",
               PYTHONUNBUFFERED="1")
    script = str(installed / "buidl-edge")
    proc = None
    try:
        where = subprocess.run([str(installed / "python"), "-c", "import buidl_edge; print(buidl_edge.__file__)"],
                               env=env, cwd=elsewhere, capture_output=True, text=True, timeout=30)
        assert where.stdout.startswith(str(installed.parent)), where.stdout  # the wheel's copy, not the checkout

        check = subprocess.run([script, "check"], env=env, cwd=elsewhere, capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "app ok: buidl_edge.api.bot:app" in check.stdout and "app token ok" in check.stdout

        out_path = state_dir / "run.out"
        with open(out_path, "ab") as out:
            proc = subprocess.Popen([script, "run", "-n", "1"], env=env, cwd=elsewhere, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        sim.client.wait_for(lambda s: s["open_connections"] == 1, 60, "the installed stack to connect")
        conf = (state_dir / "supervisord.conf").read_text()
        assert f"command={installed / 'python'} -m buidl_edge worker" in conf
        assert "Rendered by `buidl-edge run`" in conf  # the template shipped in the wheel

        def running() -> dict | None:
            status = subprocess.run([script, "status", "--json"], env=env, cwd=elsewhere, capture_output=True,
                                    text=True, timeout=30)
            rows = json.loads(status.stdout)["processes"] if status.returncode == 0 else []
            return rows[0] if rows and rows[0]["connections_open"] == 1 else None

        row = wait_until(running, 20, "status to show the worker with its connection", interval=0.5)
        assert (row["process"], row["state"]) == ("worker_00", "RUNNING")
        sim.client.inject("app_mention", channel="CWHEEL", text="<@U0BUIDL> hi")
        sim.client.wait_for(lambda s: s["messages_posted"] == 1, 15, "the bot's reply")

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out_path.read_text()
        assert "cannot find" not in out_path.read_text() and "Traceback" not in out_path.read_text()
    finally:
        if proc is not None and proc.poll() is None:  # a failed test: nothing of the stack may outlive it
            for pid in session_pids(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
