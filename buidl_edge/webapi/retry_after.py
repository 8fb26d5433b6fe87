"""The one reading of a `Retry-After` header, for every 429 the edge's own calls get (the Web
API, the relay's backend).

RFC 9110 allows whole seconds or an HTTP-date; urllib3's `Retry.parse_retry_after` reads both
(and the obsolete date forms), so it does the reading rather than code of our own. Around it:
- a decimal such as "1.5" is taken as seconds too: not RFC, but both readings the edge had
  before took it, and a backend may send one;
- absent, unreadable, not a number, or a date no clock can hold: DEFAULT_RETRY_AFTER_S, a short
  wait rather than none;
- never below 0 (a date gone by means now) nor above MAX_RETRY_AFTER_S, so that one bad header
  cannot hold a channel, or the relay, for days.
"""
from __future__ import annotations

import math

from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 3600.0

_RETRY = Retry(total=0)  # only its parser is used; it keeps no state between calls


def parse_retry_after(value: str | None) -> float:
    """Seconds to wait from now, per `value` (a Retry-After header, or None when there was none)."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(_RETRY.parse_retry_after(value))
    except InvalidHeader:  # neither whole seconds nor a date
        try:
            seconds = float(value)
        except ValueError:
            return DEFAULT_RETRY_AFTER_S
    except (OverflowError, ValueError):  # a date past what the platform's clock can hold
        return DEFAULT_RETRY_AFTER_S
    if math.isnan(seconds):
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))
