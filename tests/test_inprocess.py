"""The in-process tests (tests/inprocess/), each module in a gevent-patched child of its own.

Worker, ConnectionSlot, Outbox, SlotGate and GroupCommit run there in the test's own process,
against the real simulator, as in a worker. tests/inprocess/run.py patches before pytest is
imported and says why that cannot happen in this process. One child per module, so that
pytest-xdist spreads them; a failure shows the child's own pytest report.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
RUNNER = TESTS_DIR / "inprocess" / "run.py"
MODULES = sorted((TESTS_DIR / "inprocess").glob("test_*.py"))
# The child's tests bound themselves (a gevent.Timeout each); this catches a hub that never yields.
RUN_LIMIT_S = 150

pytestmark = pytest.mark.timeout(RUN_LIMIT_S + 30)


@pytest.mark.parametrize("module", MODULES, ids=[m.stem for m in MODULES])
def test_in_a_gevent_patched_process(module: Path, tmp_path: Path) -> None:
    report = tmp_path / "pytest.out"
    with open(report, "wb") as out:
        # A session of its own: on a hang, the simulator it started goes down with it.
        child = subprocess.Popen([sys.executable, str(RUNNER), "-q", "-rfEs", "--basetemp", str(tmp_path / "t"),
                                  str(module)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=TESTS_DIR.parent, start_new_session=True)
        try:
            code = child.wait(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = None
    output = report.read_text(errors="replace")
    assert code == 0, f"{module.name} in a patched process: exit {code}\n{output[-30000:]}"
