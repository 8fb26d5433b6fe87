"""Errors a new user meets in the first hour say what is actually wrong, in one line (issue 22, part 3).

An unusable state dir, a Slack that cannot be reached, settings `run` would refuse, handlers
written with Bolt's habits, a Bolt app named as BUIDL_APP: each is found by `check` (and `config`
where it is a setting) before anything starts, and `run`/`worker` refuse it in one line.
"""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from buidl_edge.api.app import AppError, EdgeApp
from stack_support import cli, tokens_env

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command printed; fails on a traceback or on more lines."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------- an unusable state dir


@contextlib.contextmanager
def read_only_mount(where: Path) -> Iterator[Path]:
    """A real read-only tmpfs at `where` (root only); skipped where nothing can be mounted."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def unusable_state_dir(case: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A state dir that cannot be used, and what the one line must say about it."""
    if case == "under a file":
        (tmp_path / "afile").write_text("not a directory")
        yield tmp_path / "afile" / "state", f"{tmp_path / 'afile'} is not a directory"
    elif case == "under /proc":
        yield Path("/proc/buidl-nowhere/state"), "cannot create /proc/buidl-nowhere: No such file or directory"
    else:
        with read_only_mount(tmp_path / "ro") as mount:
            yield mount, f"cannot write in {mount}: Read-only file system"


@pytest.mark.parametrize("case", ["under a file", "under /proc", "on a read-only mount"])
def test_run_and_check_refuse_an_unusable_state_dir_in_one_line(tmp_path: Path, case: str) -> None:
    with unusable_state_dir(case, tmp_path) as (state_dir, why):
        env = tokens_env(state_dir, f"http://127.0.0.1:{closed_port()}/api/")
        ran = one_error_line(cli(env, "run", cwd=tmp_path))
        assert ran == f"Error: the state dir {state_dir} cannot be used: {why} (set BUIDL_STATE_DIR to a " \
                      "directory this user can write)", ran
        checked = one_error_line(cli(env, "check", cwd=tmp_path))  # found before Slack is called
        assert checked == ran
        shown = cli(env, "config", cwd=tmp_path)
        assert shown.returncode == 1 and config_rows(shown.stdout)["state_dir"] == f"{state_dir}  REFUSED: {ran[7:]}"
        assert not (tmp_path / "afile").is_dir() and not Path("/proc/buidl-nowhere").exists()


# ---------------------------------------------------------------- Slack that cannot be reached


def test_a_web_api_that_is_not_listening_is_said_as_unreachable_not_as_refused_or_timed_out(tmp_path: Path) -> None:
    api_url = f"http://127.0.0.1:{closed_port()}/api/"
    line = one_error_line(cli(tokens_env(tmp_path / "state", api_url), "check", cwd=tmp_path))
    assert line == f"Error: cannot reach Slack at {api_url}: connection refused (auth.test)"


def test_refused_and_timed_out_calls_keep_different_error_codes(tmp_path: Path) -> None:
    from buidl_edge.config import Secret
    from buidl_edge.sandbox.harness import fake_tokens
    from buidl_edge.webapi.client import SlackUnreachable, WebApi

    token = Secret(fake_tokens()["SLACK_BOT_TOKEN"])
    with pytest.raises(SlackUnreachable) as refused:
        WebApi(f"http://127.0.0.1:{closed_port()}/api/", timeout=2).auth_test(token)
    assert refused.value.error == "network:ConnectionRefused" and refused.value.status == 0
    with socket.socket() as silent:  # accepts and never answers: a hung Slack
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/"
        with pytest.raises(SlackUnreachable) as hung:
            WebApi(url, timeout=0.3).auth_test(token)
    assert hung.value.error == "network:ReadTimeout"
    assert str(hung.value) == f"Slack at {url} did not answer within 0.3s (auth.test)"


# ---------------------------------------------------------------- config flags what run would refuse


def config_rows(stdout: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in stdout.splitlines() if line.strip())


def test_config_flags_every_setting_run_would_refuse_and_exits_non_zero(tmp_path: Path) -> None:
    env = tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/", BUIDL_PROCESSES=20, BUIDL_POST_RATE="-1")
    env["SLACK_BOT_TOKEN"] = env["SLACK_APP_TOKEN"]  # an app token where the bot token belongs
    shown = cli(env, "config", cwd=tmp_path)
    assert shown.returncode == 1, shown.stdout
    rows = config_rows(shown.stdout)
    assert rows["processes"] == ("20  REFUSED: 20 processes x (1 connections + 1 spare for a refresh) = 40; "
                                 "Slack allows 10 per app")
    assert rows["bot_token"].startswith("NOT USABLE: SLACK_BOT_TOKEN must start with xoxb-")
    assert rows["outbox"] == "REFUSED: BUIDL_POST_RATE must be at least 0, got -1.0"
    assert shown.stderr.strip() == "Error: `run` would refuse 3 settings: bot_token, processes, outbox"
    assert env["SLACK_APP_TOKEN"] not in shown.stdout + shown.stderr

    as_json = cli(env, "config", "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    refused = json.loads(as_json.stdout)["refused"]
    assert sorted(refused) == ["bot_token", "outbox", "processes"]
    assert "Slack allows 10 per app" in refused["processes"]

    fine = cli(tokens_env(tmp_path / "state", "http://127.0.0.1:9/api/"), "config", cwd=tmp_path)
    assert fine.returncode == 0 and "REFUSED" not in fine.stdout and "NOT USABLE" not in fine.stdout


# ---------------------------------------------------------------- handler signatures, checked at load


BOLT_HABITS = {
    "say_as_second": ("event", "app_mention", "def hello(event, say):\n    say('hi')\n", "hello(event, say)"),
    "ack_first": ("command", "/standup", "def cmd(ack, command):\n    ack('ok')\n", "cmd(ack, command)"),
    "three_args": ("event", "app_mention", "def hello(event, ctx, logger):\n    pass\n",
                   "hello(event, ctx, logger)"),
}


def app_module(folder: Path, decorator: str, key: str, body: str) -> Path:
    (folder / "habits_bot.py").write_text(
        f"from buidl_edge import EdgeApp\napp = EdgeApp('habits')\n\n@app.{decorator}({key!r})\n{body}")
    return folder


@pytest.mark.parametrize("habit", sorted(BOLT_HABITS))
def test_a_handler_written_with_bolt_habits_is_refused_when_the_app_loads(tmp_path: Path, habit: str) -> None:
    decorator, key, body, shown = BOLT_HABITS[habit]
    folder = app_module(tmp_path, decorator, key, body)
    env = tokens_env(tmp_path / "state", f"http://127.0.0.1:{closed_port()}/api/", BUIDL_APP="habits_bot:app")
    expected = (f"handler {shown} at {folder / 'habits_bot.py'}:4 does not take EdgeApp's arguments: EdgeApp "
                f"calls {shown.split('(')[0]}(payload, ctx), and a handler answers through ctx (ctx.say, "
                "ctx.respond, ctx.client); a Bolt listener runs behind relay mode instead")
    checked = one_error_line(cli(env, "check", cwd=folder))
    assert checked == f"Error: {expected}"
    worker = cli(env, "worker", cwd=folder)
    assert worker.returncode == 3 and worker.stderr.strip().splitlines() == [
        f"buidl-edge worker: cannot start: {expected}"]


def test_handlers_that_take_payload_and_ctx_by_any_names_are_accepted() -> None:
    app = EdgeApp("fine")

    @app.event("app_mention")
    def mention(event, ctx):
        return None

    @app.command("/x", threaded=True)
    def command(command, context):
        return None

    app.register_handler("message", lambda e, c: None)

    @app.interactive("block_actions")
    def clicked(payload, ctx, extra=None):
        return None

    app.message("hi")(lambda event, ctx: None)
    with pytest.raises(AppError, match=r"handler on_hi\(event, say\) at .* does not take EdgeApp's arguments"):
        @app.message("hi")
        def on_hi(event, say):
            return None


# ---------------------------------------------------------------- a Bolt app named as BUIDL_APP


BOLT_APP = textwrap.dedent("""
    import os
    from slack_bolt import App
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    app = App(token=os.environ["SLACK_BOT_TOKEN"], signing_secret="0" * 32, token_verification_enabled=False)
    handler = SocketModeHandler(app, os.environ["SLACK_APP_TOKEN"])
""")


def test_a_bolt_app_named_as_buidl_app_is_recognised_and_its_handler_is_not(tmp_path: Path) -> None:
    (tmp_path / "bolt_bot.py").write_text(BOLT_APP)
    env = tokens_env(tmp_path / "state", f"http://127.0.0.1:{closed_port()}/api/", BUIDL_APP="bolt_bot:app")
    # The app step passes (tests/test_bolt_app.py sees `check` through): it fails later, at the closed port.
    assert one_error_line(cli(env, "check", cwd=tmp_path)).startswith("Error: cannot reach Slack at ")
    handler = cli({**env, "BUIDL_APP": "bolt_bot:handler"}, "check", cwd=tmp_path)
    assert one_error_line(handler) == ("Error: bolt_bot:handler is a Bolt SocketModeHandler, not an App: name the "
                                       "App itself (`app = App(...)`)")


def test_a_bolt_async_app_is_refused_in_one_line_that_says_why() -> None:
    from buidl_edge.bolt.loading import checked_bolt_app

    # slack_bolt's AsyncApp needs aiohttp, which buidl-edge does not install: a stand-in of its type.
    async_app = type("AsyncApp", (), {"__module__": "slack_bolt.app.async_app"})()
    with pytest.raises(AppError) as refused:
        checked_bolt_app(async_app, "bot:app")
    assert str(refused.value) == ("bot:app is a Bolt AsyncApp: buidl-edge runs listeners on gevent, not asyncio; "
                                  "make it a slack_bolt App (the same listeners, as plain functions)")
