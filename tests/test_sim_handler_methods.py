"""The simulator's Web API methods that handlers use through ctx.client, and its response_urls.

Driven by the real slack_sdk WebClient (what ctx.client is) and by plain HTTP posts, against
the real simulator process; each test reads back what the simulator recorded.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from buidl_edge.sandbox.simulator.client import SimulatorProcess

pytestmark = pytest.mark.timeout(30)


def client(sim: SimulatorProcess, **kwargs: Any) -> WebClient:
    token = "xoxb-" + "-".join(secrets.token_hex(4) for _ in range(3))  # made up now, for the simulator
    return WebClient(token=token, base_url=sim.api_url, timeout=5, **kwargs)


def error_of(call: Any, **kwargs: Any) -> str:
    with pytest.raises(SlackApiError) as caught:
        call(**kwargs)
    return str(caught.value.response["error"])


def person_message(sim: SimulatorProcess, channel: str = "C0TALK", text: str = "hello") -> str:
    """A person's message, injected as an event; returns its ts."""
    ts = f"{time.time():.6f}"
    sim.client.inject("message", channel=channel, text=text, ts=ts)
    return ts


def test_reactions_add_records_the_reaction_and_answers_slacks_errors(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    ts = person_message(sim)
    assert web.reactions_add(channel="C0TALK", name="eyes", timestamp=ts)["ok"]
    own = web.chat_postMessage(channel="C0TALK", text="mine")["ts"]
    web.reactions_add(channel="C0TALK", name="white_check_mark", timestamp=own)
    assert error_of(web.reactions_add, channel="C0TALK", name="eyes", timestamp=ts) == "already_reacted"
    assert error_of(web.reactions_add, channel="C0TALK", name="eyes", timestamp="1.000001") == "message_not_found"
    assert error_of(web.reactions_add, channel="C0TALK", name=":eyes:", timestamp=ts) == "invalid_name"
    assert error_of(web.reactions_add, channel="C0TALK", name="eyes", timestamp="soon") == "bad_timestamp"
    reactions = [(r["channel"], r["ts"], r["name"]) for r in sim.client.state()["reactions"]]
    assert reactions == [("C0TALK", ts, "eyes"), ("C0TALK", own, "white_check_mark")]
    assert sim.client.summary()["reactions_added"] == 2


def test_chat_update_and_delete_change_only_the_bots_own_messages(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    posted = web.chat_postMessage(channel="C0TALK", text="thinking…")
    updated = web.chat_update(channel="C0TALK", ts=posted["ts"], text="Here is the answer.")
    assert updated["ts"] == posted["ts"] and updated["text"] == "Here is the answer."
    person = person_message(sim)
    assert error_of(web.chat_update, channel="C0TALK", ts=person, text="x") == "cant_update_message"
    assert error_of(web.chat_update, channel="C0TALK", ts="1.000001", text="x") == "message_not_found"
    with pytest.warns(UserWarning, match="text"):  # slack_sdk warns too
        assert error_of(web.chat_update, channel="C0TALK", ts=posted["ts"]) == "no_text"
    assert error_of(web.chat_update, channel="C0TALK", ts=posted["ts"], text="x" * 40_001) == "msg_too_long"
    [message] = sim.client.state()["messages"]
    assert (message["text"], message["edits"]) == ("Here is the answer.", 1)

    second = web.chat_postMessage(channel="C0TALK", thread_ts=posted["ts"], text="a reply")["ts"]
    assert web.chat_delete(channel="C0TALK", ts=second)["ok"]
    assert error_of(web.chat_delete, channel="C0TALK", ts=second) == "message_not_found"
    assert error_of(web.chat_delete, channel="C0TALK", ts=person) == "cant_delete_message"
    thread = web.conversations_replies(channel="C0TALK", ts=posted["ts"])["messages"]
    assert [m["text"] for m in thread] == ["Here is the answer."]  # the deleted reply is gone
    summary = sim.client.summary()
    assert (summary["messages_updated"], summary["messages_deleted"]) == (1, 1)


def test_views_open_takes_each_fresh_trigger_id_once(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    sim.client.configure(trigger_ttl=0.5)
    [command] = sim.client.inject("slash_command", command="/buidl", text="new")
    view = {"type": "modal", "title": {"type": "plain_text", "text": "New task"},
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Describe it"}}]}
    trigger_id = _payload(sim, command["key"])["trigger_id"]
    opened = web.views_open(trigger_id=trigger_id, view=view)["view"]
    assert opened["id"].startswith("V") and opened["title"]["text"] == "New task"
    assert error_of(web.views_open, trigger_id=trigger_id, view=view) == "exchanged_trigger_id"
    assert error_of(web.views_open, trigger_id="123.456.abc", view=view) == "invalid_trigger_id"
    [late] = sim.client.inject("slash_command", command="/buidl")
    late_trigger = _payload(sim, late["key"])["trigger_id"]
    assert error_of(web.views_open, trigger_id=late_trigger, view={"type": "home", "blocks": []}) == \
        "invalid_arguments"
    time.sleep(0.6)  # Slack's trigger ids last 3 s; this simulator's 0.5 s
    assert error_of(web.views_open, trigger_id=late_trigger, view=view) == "expired_trigger_id"
    views = sim.client.state()["views"]
    assert [v["trigger_id"] for v in views] == [trigger_id] and views[0]["view"]["id"] == opened["id"]


def test_assistant_thread_status_and_prompts_are_recorded_per_thread(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    [started] = sim.client.inject("assistant_thread_started", channel="D0ASK", thread_ts="1700000000.000100")
    thread = _payload(sim, started["key"])["event"]["assistant_thread"]
    assert (thread["channel_id"], thread["thread_ts"]) == ("D0ASK", "1700000000.000100")
    prompts = [{"title": "Review", "message": "Review my branch"}]
    web.assistant_threads_setSuggestedPrompts(channel_id="D0ASK", thread_ts="1700000000.000100",
                                              prompts=prompts, title="Try")
    web.assistant_threads_setStatus(channel_id="D0ASK", thread_ts="1700000000.000100", status="is thinking…",
                                    loading_messages=["Reading…", "Writing…"])
    web.assistant_threads_setStatus(channel_id="D0ASK", thread_ts="1700000000.000100", status="")
    assert error_of(web.assistant_threads_setStatus, channel_id="D0ASK", thread_ts="later", status="x") == \
        "invalid_thread_ts"
    assert error_of(web.assistant_threads_setSuggestedPrompts, channel_id="D0ASK",
                    prompts=[{"title": "no message"}]) == "invalid_arguments"
    assert error_of(web.assistant_threads_setSuggestedPrompts, channel_id="D0ASK",
                    prompts=prompts * 5) == "invalid_arguments"
    assistant = sim.client.state()["assistant"]
    assert [s["status"] for s in assistant["statuses"]] == ["is thinking…", ""]
    assert assistant["statuses"][0]["loading_messages"] == ["Reading…", "Writing…"]
    assert assistant["current"] == {"D0ASK/1700000000.000100": ""}
    # Posting in the thread clears its status, as in Slack.
    web.assistant_threads_setStatus(channel_id="D0ASK", thread_ts="1700000000.000100", status="is writing…")
    web.chat_postMessage(channel="D0ASK", thread_ts="1700000000.000100", text="Here you go.")
    assistant = sim.client.state()["assistant"]
    assert [(s["status"], s["by"]) for s in assistant["statuses"][2:]] == [("is writing…", "set_status"),
                                                                           ("", "message")]
    assert assistant["current"] == {"D0ASK/1700000000.000100": ""}
    assert [(p["title"], p["prompts"]) for p in assistant["prompts"]] == [("Try", prompts)]


def test_unknown_method_and_a_ratelimited_method(fresh_simulator: SimulatorProcess) -> None:
    sim = fresh_simulator
    web = client(sim, retry_handlers=[])  # no retries: see the 429 itself
    resp = requests.post(sim.api_url + "chat.teleport", headers={"Authorization": "Bearer x"}, timeout=5)
    assert resp.json() == {"ok": False, "error": "unknown_method", "req_method": "chat.teleport"}
    sim.client.configure(method_ratelimits={"reactions.add": {"count": 1, "retry_after": 7}})
    ts = person_message(sim)
    with pytest.raises(SlackApiError) as caught:
        web.reactions_add(channel="C0TALK", name="eyes", timestamp=ts)
    assert caught.value.response.status_code == 429 and caught.value.response.headers["Retry-After"] == "7"
    assert web.reactions_add(channel="C0TALK", name="eyes", timestamp=ts)["ok"]  # the count is spent
    summary = sim.client.summary()
    assert summary["method_429s"] == {"reactions.add": 1} and summary["method_calls"]["reactions.add"] == 1


def test_response_url_is_loopback_records_posts_and_expires_after_five(fresh_simulator: SimulatorProcess) -> None:
    sim = fresh_simulator
    [command] = sim.client.inject("slash_command", command="/standup", channel="C0TEAM")
    url = _payload(sim, command["key"])["response_url"]
    assert url.startswith(sim.base_url + "/_sim/respond/")
    sim.client.configure(respond_failures=1)
    assert requests.post(url, json={"text": "first"}, timeout=5).status_code == 500  # uses nothing up
    answers = [requests.post(url, json={"text": f"update {n}", "response_type": "in_channel"}, timeout=5)
               for n in range(5)]
    assert [(a.status_code, a.text) for a in answers] == [(200, "ok")] * 5
    sixth = requests.post(url, json={"text": "one too many"}, timeout=5)
    assert (sixth.status_code, sixth.text) == (404, "expired_url")
    assert requests.post(url, data="text=form", timeout=5).status_code == 404  # still expired
    posts = sim.client.state()["responses"]
    assert [(p["text"], p["response_type"], p["channel"], p["use"]) for p in posts] == \
        [(f"update {n}", "in_channel", "C0TEAM", n + 1) for n in range(5)]
    summary = sim.client.summary()
    assert (summary["responses_posted"], summary["respond_500s"], summary["respond_expired"]) == (5, 1, 2)


def test_response_url_of_a_click_replaces_or_deletes_the_message(fresh_simulator: SimulatorProcess) -> None:
    sim, web = fresh_simulator, client(fresh_simulator)
    ts = web.chat_postMessage(channel="C0TEAM", text="Approve the deploy?")["ts"]
    [click] = sim.client.inject("block_action", channel="C0TEAM", message_ts=ts)
    url = _payload(sim, click["key"])["response_url"]
    assert requests.post(url, json={"text": "Approved.", "replace_original": True}, timeout=5).text == "ok"
    assert [m["text"] for m in sim.client.state()["messages"]] == ["Approved."]
    assert requests.post(url, json={"delete_original": True}, timeout=5).text == "ok"
    assert sim.client.state()["messages"][0]["deleted"] is True
    assert requests.post(url, json={"response_type": "everyone", "text": "x"}, timeout=5).status_code == 400


def _payload(sim: SimulatorProcess, key: str) -> dict[str, Any]:
    """What Slack sends for an injected event."""
    return sim.client.event(key)["payload"]
