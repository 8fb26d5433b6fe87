"""Bad messages are refused before they are queued, by every way in: ctx.say, app.send_message,
`buidl-edge send`; and the outbox settings refuse bad values with a clear error."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from buidl_edge.api.app import Context, EdgeApp
from buidl_edge.api.message import MAX_TEXT_CHARS, MessageError, parse_blocks_json, validate_reply
from buidl_edge.cli import cli
from buidl_edge.config import ConfigError, OutboxConfig
from buidl_edge.delivery.ratelimit import PostLimits
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.base import Reply
from buidl_edge.store.sqlite import SqliteStore

DIVIDER = {"type": "divider"}

# (channel, text, blocks, thread_ts) -> what the error must say
BAD = [
    pytest.param("C0OK", None, None, None, "needs text or blocks", id="nothing"),
    pytest.param("C0OK", "", [], None, "needs text or blocks", id="empty text and blocks"),
    pytest.param("C0OK", "x" * (MAX_TEXT_CHARS + 1), None, None, "40,001 characters", id="text too long"),
    pytest.param("C0OK", 42, None, None, "text must be a string", id="text not a string"),
    pytest.param("C0OK", None, {"type": "divider"}, None, "must be a list", id="blocks not a list"),
    pytest.param("C0OK", None, [DIVIDER] * 51, None, "51 blocks", id="51 blocks"),
    pytest.param("C0OK", None, [DIVIDER, "divider"], None, "block 1 is a str", id="block not an object"),
    pytest.param("C0OK", None, [{"text": "x"}], None, "no string 'type'", id="block without type"),
    pytest.param("C0OK", None, [{"type": 3}], None, "no string 'type'", id="block type not a string"),
    pytest.param("C0OK", None, [{"type": "section", "x": object()}], None, "not plain JSON", id="blocks not JSON"),
    pytest.param("general", "hi", None, None, "use the channel id, not its name", id="channel name"),
    pytest.param("#general", "hi", None, None, "not a Slack channel id", id="channel with hash"),
    pytest.param("c0123abcd", "hi", None, None, "not a Slack channel id", id="lowercase id"),
    pytest.param("U0123ABCD", "hi", None, None, "not a Slack channel id", id="user id"),
    pytest.param("", "hi", None, None, "not a Slack channel id", id="empty channel"),
    pytest.param("C0OK", "hi", None, "yesterday", "not a Slack message ts", id="bad thread_ts"),
]

GOOD = [
    Reply("C0123ABCD", "hello"),
    Reply("G0PRIVATE", blocks=[DIVIDER] * 50),
    Reply("D0DM", "x" * MAX_TEXT_CHARS, thread_ts="1700000000.000100"),
    Reply("C1", "", [DIVIDER]),
]


@pytest.mark.parametrize("channel,text,blocks,thread_ts,problem", BAD)
def test_bad_input_is_refused_with_a_clear_error(channel: str, text: Any, blocks: Any, thread_ts: str | None,
                                                problem: str) -> None:
    with pytest.raises(MessageError, match=problem):
        validate_reply(Reply(channel, text, blocks, thread_ts))


@pytest.mark.parametrize("reply", GOOD, ids=["text", "50 blocks", "40k text in a thread", "blocks, empty text"])
def test_good_input_passes_unchanged(reply: Reply) -> None:
    assert validate_reply(reply) is reply


# ctx.say itself answers "nothing at all" (AppError), and "" means the envelope's channel.
@pytest.mark.parametrize("channel,text,blocks,thread_ts,problem",
                         [p for p in BAD if p.id not in ("nothing", "empty channel")])
def test_ctx_say_refuses_bad_input_and_queues_nothing(channel: str, text: Any, blocks: Any,
                                                      thread_ts: str | None, problem: str) -> None:
    envelope = Envelope("events_api", "E1", {"event": {"type": "message", "channel": "C0EVENT"}})
    ctx = Context(envelope=envelope, logger=logging.LoggerAdapter(logging.getLogger("t"), {}))
    with pytest.raises(MessageError, match=problem):
        ctx.say(text, blocks=blocks, channel=channel, thread_ts=thread_ts)
    assert ctx.replies == []


def test_send_message_refuses_bad_input_before_the_sink() -> None:
    app = EdgeApp()
    sunk: list[Reply] = []
    app.bind(sunk.append)
    with pytest.raises(MessageError, match="not a Slack channel id"):
        app.send_message("#general", "hi")
    with pytest.raises(MessageError, match="51 blocks"):
        app.send_message("C0OK", {"blocks": [DIVIDER] * 51})
    assert sunk == []


@pytest.mark.parametrize("args,problem", [
    (["send", "general", "hi"], "use the channel id"),
    (["send", "C0OK"], "needs text or blocks"),
    (["send", "C0OK", "x" * (MAX_TEXT_CHARS + 1)], "40,001 characters"),
    (["send", "C0OK", "hi", "--thread-ts", "soon"], "not a Slack message ts"),
    (["send", "C0OK", "--blocks-file", "{blocks}"], "not valid JSON"),
])
def test_send_refuses_bad_input_and_queues_nothing(args: list[str], problem: str, tmp_path: Path) -> None:
    bad_blocks = tmp_path / "blocks.json"
    bad_blocks.write_text("[{'type': 'divider'}]")  # Python, not JSON
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, [a.replace("{blocks}", str(bad_blocks)) for a in args],
                                env={"BUIDL_STATE_DIR": str(state)})
    assert result.exit_code == 1 and problem in result.output and "not sent" in result.output
    assert not (state / "edge.sqlite3").exists()


def test_send_refuses_to_queue_into_a_memory_store_no_worker_can_see(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["send", "C0OK", "hi"],
                                env={"BUIDL_STATE_DIR": str(tmp_path), "BUIDL_STORE_URL": "memory://"})
    assert result.exit_code == 1 and "use --now" in result.output


def test_send_reads_text_from_stdin_and_queues_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    SqliteStore(state / "edge.sqlite3", checkpoint_interval_s=None).close()  # `send` queues into the workers' store
    result = CliRunner().invoke(cli, ["send", "C0OK", "-", "--json"], input="from stdin\n",
                                env={"BUIDL_STATE_DIR": str(state)})
    assert result.exit_code == 0, result.output
    row_id = json.loads(result.output)["id"]
    store = SqliteStore(state / "edge.sqlite3", checkpoint_interval_s=None)
    try:
        row = store.outbox_row(row_id)
        assert row is not None and row.text == "from stdin"  # the one trailing newline is stripped
    finally:
        store.close()


def test_blocks_files_may_be_a_list_or_block_kit_builders_object() -> None:
    assert parse_blocks_json(json.dumps([DIVIDER])) == [DIVIDER]
    assert parse_blocks_json(json.dumps({"blocks": [DIVIDER]})) == [DIVIDER]
    with pytest.raises(MessageError, match="must be a list"):
        parse_blocks_json(json.dumps({"type": "divider"}))


def test_outbox_settings_from_the_environment() -> None:
    config = OutboxConfig.from_env({"BUIDL_POST_RATE": "0.5", "BUIDL_POST_BURST": "5",
                                    "BUIDL_POST_GLOBAL_RATE": "20", "BUIDL_POST_MAX_ATTEMPTS": "7",
                                    "BUIDL_POST_429_SCOPE": "GLOBAL"})
    assert config.limits == PostLimits(rate=0.5, burst=5.0, global_rate=20.0)
    assert (config.max_attempts, config.ratelimit_scope) == (7, "global")
    assert OutboxConfig.from_env({}) == OutboxConfig()
    assert OutboxConfig().limits.burst == 3 and OutboxConfig().limits.rate == 1


@pytest.mark.parametrize("env,problem", [
    ({"BUIDL_POST_RATE": "fast"}, "BUIDL_POST_RATE must be a number"),
    ({"BUIDL_POST_RATE": "0"}, "BUIDL_POST_RATE must be above 0"),
    ({"BUIDL_POST_RATE": "nan"}, "BUIDL_POST_RATE must be a finite number"),
    ({"BUIDL_POST_GLOBAL_RATE": "inf"}, "BUIDL_POST_GLOBAL_RATE must be a finite number"),
    ({"BUIDL_POST_BURST": "0.5"}, "BUIDL_POST_BURST must be at least 1"),
    ({"BUIDL_POST_MAX_ATTEMPTS": "0"}, "BUIDL_POST_MAX_ATTEMPTS must be at least 1"),
    ({"BUIDL_POST_429_SCOPE": "team"}, "channel or global"),
])
def test_bad_outbox_settings_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        OutboxConfig.from_env(env)
