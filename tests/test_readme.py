"""README as a new user follows it.

"Your own bot in three commands" runs as written, from the project's root with bash, against a
real simulator and a real worker, and prints what README shows. The settings table names every
variable the configuration reads.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from buidl_edge.sandbox.harness import wait_until
from redis_support import free_port

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
OWN_BOT = "## Your own bot in three commands"
TABLE_HEADER = "| variable | meaning | default |"
# Names in config/ that are not variables:
NOT_VARIABLES = {"SLACK_MAX_CONNECTIONS"}  # Slack's limit, a constant exported by config
# Said once, in the line that names them, and only when the simulator answers.
MAYBE_SHOWN = "no worker is connected: the simulator holds the event until one connects"


def section(text: str, title: str) -> str:
    """From `title` to the next heading of the same level."""
    start = text.index(title + "\n")
    level = title.split(" ", 1)[0]
    end = text.find(f"\n{level} ", start + len(title))
    return text[start:] if end == -1 else text[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def normalised(output: str) -> list[str]:
    """Lines with what differs from run to run (timestamps, event ids, milliseconds) made the same,
    and the line that only shows when the worker was not connected yet left out."""
    output = re.sub(r"\b\d{10}\.\d{6}\b", "TS", output)
    output = re.sub(r"\bEv\w+", "EVENT", output)
    output = re.sub(r"\bin \d+ ms\b", "in N ms", output)
    return [line.rstrip() for line in output.splitlines() if line.strip() and line != MAYBE_SHOWN]


def test_your_own_bot_section_runs_as_written_and_prints_what_it_shows(tmp_path: Path) -> None:
    part = section((ROOT / "README.md").read_text(), OWN_BOT)
    [script] = blocks(part, "sh")
    [shown] = blocks(part, "text")
    port = free_port()  # the simulator's: free here, whatever 8765 is doing
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BUIDL_", "SENTRY_"))}
    env.update(BUIDL_HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path), BUIDL_SIM_URL=f"http://127.0.0.1:{port}")
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
        [bot_dir] = [p for p in tmp_path.iterdir() if (p / "hello.py").exists()]  # the block's mktemp -d
        worker_log = bot_dir / "worker.log"
        wait_until(lambda: "worker stopped" in worker_log.read_text(), 15, "the worker to drain and stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the block left running
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Hello <@U0HUMAN>!" in out, out  # the bot's answer to the mention
    expected = normalised("\n".join(line for line in shown.splitlines() if not line.startswith("$ ")))
    assert normalised(out) == expected, f"README shows:\n{shown}\nit printed:\n{out}"
    log = worker_log.read_text()
    assert "Traceback" not in log and "level=error" not in log, log


def test_the_settings_table_names_every_variable_the_configuration_reads() -> None:
    sources = "".join(p.read_text() for p in sorted((ROOT / "buidl_edge" / "config").glob("*.py")))
    read = set(re.findall(r'"((?:BUIDL|SLACK|SENTRY|WEBSOCKET|BOT|HTTPS?|NO|HEROKU|SOURCE)_[A-Z0-9_]+)"', sources))
    read -= NOT_VARIABLES
    [table] = [text.split(TABLE_HEADER, 1)[1].split("\n\n", 1)[0]
               for text in (p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
               if TABLE_HEADER in text]
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert missing == [], f"variables read in buidl_edge/config but missing from the settings table: {missing}"

