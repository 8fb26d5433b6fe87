"""Run tests/inprocess/ in a gevent-patched process, the way a worker runs: the patch first, then pytest.

gevent's monkey module says patching is reliable only when it is the first thing a process
does, on the main thread, while the process is single-threaded; patching later (after threads,
sockets or signal handlers exist) "can lead to unreliable behaviour ... or even errors". A
pytest(-xdist) worker is none of that: execnet's threads run, and pytest and its plugins have
imported the standard library long before any conftest could patch it. So these tests never
run in the suite's own processes. tests/test_inprocess.py starts this script once per module
(pytest-xdist spreads those like any test), and the same `gevent_patch.patch()` the `worker`
command runs comes before pytest is even imported.

By hand: `.venv/bin/python tests/inprocess/run.py [pytest args] [paths]` (no path: this whole folder).
"""
from __future__ import annotations

import sys
from pathlib import Path

from buidl_edge.runtime.gevent_patch import patch

HERE = Path(__file__).resolve().parent
# pytest-timeout's signal can only fail a test from the hub, not from the greenlet that hangs:
# conftest.py gives each test a gevent.Timeout instead (the caller bounds the whole run).
PYTEST_ARGS = ["-p", "no:cacheprovider", "-o", "timeout=0", "--rootdir", str(HERE.parent.parent)]


def main(argv: list[str]) -> int:
    patch()
    import pytest  # after the patch, on purpose: pytest's own imports get gevent's versions

    paths = [arg for arg in argv if Path(arg.split("::")[0]).exists()]
    return int(pytest.main([*PYTEST_ARGS, *argv, *([] if paths else [str(HERE)])]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
