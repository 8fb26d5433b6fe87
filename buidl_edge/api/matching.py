"""`@app.message`: which message events a message handler sees, and what its pattern matched.

By default a message handler sees what people write: plain messages, file shares, thread
broadcasts and /me messages. It does not see:
- the bot's own messages (`include_self=True` shows them);
- other bots' messages, with a `bot_id` or subtype `bot_message` (`include_bots=True`);
- edits and deletions, `message_changed` / `message_deleted` (`include_edits=True`; the
  pattern is then matched against the edited message, or the deleted one);
- a message that mentions the bot, when the app also has an `app_mention` handler: Slack sends
  one mention as both `message` and `app_mention`, and the `app_mention` handler answers it
  (`include_mentions=True` to see it in both, on purpose);
- channel joins, topic changes and the other system subtypes, never.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from re import Pattern
from typing import Any

Matches = tuple[str | None, ...]

PEOPLE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
EDIT_SUBTYPES = frozenset({"message_changed", "message_deleted"})


@dataclass(frozen=True)
class MessageFilter:
    pattern: str | Pattern[str] | None = None
    include_self: bool = False
    include_bots: bool = False
    include_edits: bool = False
    include_mentions: bool = False

    def __post_init__(self) -> None:
        if self.pattern is not None and not isinstance(self.pattern, (str, re.Pattern)):
            raise TypeError(f"a message pattern is a str or a re.compile(...) pattern, "
                            f"not {type(self.pattern).__name__}")
        if self.pattern == "":
            raise ValueError("an empty message pattern would match every message: leave it out instead")

    def match(self, event: dict[str, Any], bot_user_id: str | None, mentions_go_elsewhere: bool) -> Matches | None:
        """What `ctx.matches` holds when the handler should see `event`, else None.

        A substring pattern gives `(pattern,)`; a regex gives its groups, or `(whole match,)`
        when it has none; no pattern gives `()`.
        """
        if event.get("type") != "message":
            return None
        subtype = event.get("subtype")
        message = event
        if subtype in EDIT_SUBTYPES:
            if not self.include_edits:
                return None
            message = event.get("message") or event.get("previous_message") or {}
        elif subtype != "bot_message" and subtype not in PEOPLE_SUBTYPES:
            return None
        own = bool(bot_user_id) and message.get("user") == bot_user_id
        if own and not self.include_self:
            return None
        if not own and not self.include_bots and (message.get("bot_id") or message.get("subtype") == "bot_message"
                                                  or subtype == "bot_message"):
            return None
        text = str(message.get("text") or "")
        if mentions_go_elsewhere and not self.include_mentions and bot_user_id and f"<@{bot_user_id}>" in text:
            return None
        return self._match_text(text)

    def _match_text(self, text: str) -> Matches | None:
        pattern = self.pattern
        if pattern is None:
            return ()
        if isinstance(pattern, str):
            return (pattern,) if pattern in text else None
        found = pattern.search(text)
        if found is None:
            return None
        return found.groups() if pattern.groups else (found.group(0),)
