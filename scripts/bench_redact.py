#!/usr/bin/env python3
"""How long `redact` takes on 1 MB of text built to make each pattern work hardest.

Redaction runs on the gevent hub (every log line, every traced frame, every Sentry event), so its
cost is paid by every ack of the process. The old patterns backtracked quadratically: 40,000 "a"s
took 3.5 s. The aim is a 1 MB input of any shape in well under 50 ms.

    .venv/bin/python scripts/bench_redact.py [--size BYTES] [--repeat N]

Prints one line per input: the best of N runs, in milliseconds.
"""
from __future__ import annotations

import argparse
import functools
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buidl_edge.observability.logs import LogfmtFormatter
from buidl_edge.observability.redaction import redact, register_secret


def inputs(size: int) -> dict[str, str]:
    """Each shape repeated to `size` characters; the pattern each one aims at in brackets."""
    secret = secrets.token_hex(16)
    register_secret(secret)
    shapes = {
        "letters [userinfo: scheme run]": "a",
        "letters and colons [userinfo]": "a:",
        "schemes, no userinfo [userinfo]": "x://",
        "schemes with userinfo [userinfo, all masked]": "x://u@",
        "token prefixes glued [token]": "xoxb-",
        "tokens apart [token, all masked]": "xoxb-a ",
        "prefixes without dash [token]": "xoxbxapp",
        "tickets glued [ticket]": "ticket=",
        "tickets apart [ticket, all masked]": "ticket=a&",
        "registered secret [secrets, all masked]": secret,
        "a mixed log line [all]": "POST https://u:p@h/api?ticket=t&x=1 with xoxb-1-2 and xapp-3 ",
    }
    out = {name: (unit * (size // len(unit) + 1))[:size] for name, unit in shapes.items()}
    out["one endless userinfo [userinfo]"] = "a://" + "b" * (size - 4)
    return out


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per input (default 1 MB)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per input; the best is shown")
    args = parser.parse_args()
    cases = inputs(args.size)
    width = max(len(name) for name in cases)
    print(f"redact() on {args.size:,} characters, best of {args.repeat}")
    worst = 0.0
    for name, text in cases.items():
        ms = best_ms(functools.partial(redact, text), args.repeat)
        worst = max(worst, ms)
        print(f"  {name.ljust(width)}  {ms:8.2f} ms")
    import logging

    record = logging.LogRecord("bench", logging.INFO, __file__, 1, cases["a mixed log line [all]"], None, None)
    formatter = LogfmtFormatter()
    print(f"  {'one log record of it, formatted and cut'.ljust(width)}  "
          f"{best_ms(lambda: formatter.format(record), args.repeat):8.2f} ms")
    print(f"worst redact(): {worst:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
