"""Checks an outbound message passes before it is queued, so bad input never reaches Slack.

Called by `ctx.say`, `ctx.respond`, `app.send_message` and `buidl-edge send`. A refused
message raises `MessageError` with one line saying what is wrong and how to
fix it; nothing is queued.

Choices, where Slack leaves room:
- text: at most 40,000 characters. Slack truncates longer text (and answers
  `msg_too_long` beyond its request size), so a longer message is refused
  here rather than silently cut: split it, or send a file.
- channel: an id (`C…` public, `G…` private, `D…` direct message, then
  capitals and digits). Slack also accepts `#names`, but names change and are
  ambiguous across workspaces; ids do not.
- blocks: a list of at most 50 objects, each with a string `type`. Deeper
  Block Kit rules (text lengths per block type, …) are Slack's to check; a
  refusal then comes back as `invalid_blocks` and the row is marked failed.
- lone surrogates: a handler echoing user text may pass on a lone UTF-16
  surrogate (valid JSON from Slack, a broken emoji) that UTF-8, and so the
  Web API, cannot carry. Each one becomes U+FFFD (a surrogate pair becomes the
  character it encodes) rather than refusing: the user's text was fine to
  receive, so the answer to it should go out, with the one broken character
  shown as broken.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from buidl_edge.store.base import Reply

MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{1,30}")
THREAD_TS = re.compile(r"\d{1,12}(\.\d{1,9})?")


class MessageError(ValueError):
    """A message that would not be accepted by Slack; the text says why."""


def validate_reply(reply: Reply) -> Reply:
    """Return `reply` when Slack would take it (lone surrogates replaced), else raise MessageError."""
    channel = reply.channel
    if not isinstance(channel, str) or not CHANNEL_ID.fullmatch(channel):
        by_name = isinstance(channel, str) and channel.lstrip("#").islower()
        hint = " (use the channel id, not its name)" if by_name else ""
        raise MessageError(f"channel {str(channel)[:40]!r} is not a Slack channel id like C0123ABCD "
                           f"(C, G or D, then capitals and digits){hint}")
    text, blocks = validate_content(reply.text, reply.blocks, reply.thread_ts)
    if text is reply.text and blocks is reply.blocks:
        return reply
    return replace(reply, text=text, blocks=blocks)


def validate_content(text: Any, blocks: Any, thread_ts: Any = None) -> tuple[str | None, Any]:
    """A message's text and blocks as Slack would take them (lone surrogates replaced), else
    MessageError: the checks of `validate_reply` without a channel (ctx.respond has none)."""
    if text is not None and not isinstance(text, str):
        raise MessageError(f"text must be a string, not {type(text).__name__}")
    if blocks is not None:
        check_blocks(blocks)
    if not text and not blocks:
        raise MessageError("a message needs text or blocks (both are empty)")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise MessageError(f"text is {len(text):,} characters; Slack takes at most {MAX_TEXT_CHARS:,} "
                           "(split it or send a file)")
    if thread_ts is not None and (not isinstance(thread_ts, str) or not THREAD_TS.fullmatch(thread_ts)):
        raise MessageError(f"thread_ts {str(thread_ts)[:40]!r} is not a Slack message ts like 1700000000.000100")
    clean_text = text if text is None else utf8_text(text)
    clean_blocks = blocks if blocks is None else _utf8_json(blocks)
    return clean_text, clean_blocks


def utf8_text(text: str) -> str:
    """`text` as UTF-8 can carry it: each lone surrogate U+FFFD, a surrogate pair its character.

    The very same object when there is nothing to change (the common case costs one scan).
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _utf8_json(value: Any) -> Any:
    """`utf8_text` on every string (keys too) of nested lists and dicts; unchanged parts stay the same objects."""
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, list):
        items = [_utf8_json(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    if isinstance(value, dict):
        pairs = [(_utf8_json(k), _utf8_json(v)) for k, v in value.items()]
        same = all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items()))
        return value if same else dict(pairs)
    return value


def check_blocks(blocks: Any) -> list[dict[str, Any]]:
    if not isinstance(blocks, list):
        raise MessageError(f"blocks must be a list of block objects, not {type(blocks).__name__}")
    if len(blocks) > MAX_BLOCKS:
        raise MessageError(f"{len(blocks)} blocks; Slack takes at most {MAX_BLOCKS} per message")
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise MessageError(f"block {i} is a {type(block).__name__}, not an object")
        if not isinstance(block.get("type"), str) or not block["type"]:
            raise MessageError(f"block {i} has no string 'type' (like \"section\" or \"divider\")")
    try:
        json.dumps(blocks)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"blocks are not plain JSON: {exc}") from None
    return blocks


def parse_blocks_json(text: str, source: str = "blocks file") -> list[dict[str, Any]]:
    """Blocks from JSON: a list, or an object with a `blocks` list (Block Kit Builder's export)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"{source} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "blocks" in data:
        data = data["blocks"]
    return check_blocks(data)
