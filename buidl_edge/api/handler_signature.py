"""Is a function an EdgeApp handler? Checked when it is registered (the app module's import, so
`check` and a worker's start), not on its first event.

EdgeApp calls every handler as `fn(payload, ctx)`: the event (or the command's or interaction's
payload) and a Context. Bolt calls its listeners by keyword (`say`, `ack`, `body`, …), so a
listener written for Bolt, such as `def hello(event, say)`, takes two arguments too and would only
fail on its first event, with `TypeError: 'Context' object is not callable`. A parameter named as
Bolt names what it injects is such a listener: refused, with what the signature must be. Bolt's
keyword arguments are not accepted instead: `ctx` already carries `say`, `respond` and `client`,
and one calling convention keeps every handler (threaded or not, included apps) alike.

Imports nothing of ours.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# What Bolt injects by name: a listener's payload-like arguments, and its utilities.
BOLT_PAYLOAD_NAMES = frozenset({"body", "event", "command", "action", "payload", "message", "view", "shortcut",
                                "options"})
BOLT_UTILITY_NAMES = frozenset({"ack", "say", "respond", "client", "logger", "next", "complete", "fail",
                                "request", "response", "say_stream", "set_status", "set_title",
                                "set_suggested_prompts", "get_thread_context", "save_thread_context"})
EXPECTED = "(payload, ctx)"


def signature_problem(fn: Callable[..., Any]) -> str | None:
    """Why `fn` cannot be called as `fn(payload, ctx)` and work, in one line; None when it can
    (or when Python cannot tell its signature: a builtin, some C callables)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    try:
        signature.bind(None, None)
    except TypeError:
        return _said(fn, signature)
    first, second = (positional + ["", ""])[:2]
    if first in BOLT_UTILITY_NAMES or second in BOLT_UTILITY_NAMES | BOLT_PAYLOAD_NAMES:
        return _said(fn, signature)
    return None


def _said(fn: Callable[..., Any], signature: inspect.Signature) -> str:
    name = getattr(fn, "__name__", type(fn).__name__)
    shown = f"{name}({', '.join(p.name for p in signature.parameters.values())})"
    code = getattr(inspect.unwrap(fn), "__code__", None)
    where = f" at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return (f"handler {shown}{where} does not take EdgeApp's arguments: EdgeApp calls {name}{EXPECTED}, and a "
            "handler answers through ctx (ctx.say, ctx.respond, ctx.client); a Bolt listener runs behind relay "
            "mode instead")
