"""The fatal marker: why a worker stopped the stack for good, left for `run` to read.

A worker writes it before its fatal exit (link_disabled, a refused token, a start-up failure);
`run` reads it to exit with that reason, and a respawned sibling reads it to not start at all.
Its own module, so that a worker does not import supervisord's XML-RPC client to write it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from buidl_edge.ops.statefiles import private_dir, write_private

FATAL_MARKER = "fatal.json"


def fatal_marker(state_dir: Path) -> Path:
    return state_dir.resolve() / FATAL_MARKER


def record_fatal(state_dir: Path, reason: str) -> None:
    """Called by a worker before its fatal exit, so `run` can say why the stack stopped."""
    marker = fatal_marker(state_dir)
    private_dir(marker.parent)
    write_private(marker, json.dumps({"reason": reason, "pid": os.getpid(),
                                      "process": os.environ.get("SUPERVISOR_PROCESS_NAME", ""),
                                      "at": time.time()}))


def read_fatal(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(fatal_marker(state_dir).read_text())
    except (OSError, ValueError):
        return None
