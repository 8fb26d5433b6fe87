"""Handlers' finishes the store has not taken yet, kept in a file that outlives a kill -9.

During a store episode (a held write lock, a full disk, Redis away) a handler's finish (its
envelope done, its replies queued) waits on the store or fails, and its replies may go out from
this process's memory. Its inbox row still says `processing`: were the process killed then, a
sweeper would run the handler again and post its replies a second time. So such a finish is first
appended here (a `finish` line: the envelope, its error, its replies with their idempotency keys),
and each of its replies settled from memory adds a `settled` line. A live worker of the host reads
a dead one's journal before its sweep re-runs anything (`read_dead`), and `recover` stores what the
journal says: the replies not yet settled (their keys make a second enqueue a no-op) and the finish,
so that the sweep finds nothing left to re-run. A journal recovered is kept a while under another
name (`.recovered`): a sweeper that took a row of its owner while that owner was still alive at its
read looks there (`finishes_of`) before it runs the row again.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buidl_edge.store.base import EdgeStore, Reply, reply_key
from buidl_edge.store.spill_files import AppendFile, DirLook, dead_files, file_name, read_text

SUFFIX = ".finishes"
RECOVERED = ".recovered"
# How long a recovered journal is kept for the sweepers that took its owner's rows meanwhile.
KEEP_RECOVERED_S = 120.0


@dataclass
class JournaledFinish:
    envelope_id: str
    error: str | None
    replies: dict[str, Reply]  # by idempotency key: those not settled yet


@dataclass
class DeadFinishes:
    """What this host's dead workers' journals hold."""

    paths: list[Path] = field(default_factory=list)
    finishes: dict[str, JournaledFinish] = field(default_factory=dict)

    def recover(self, store: EdgeStore) -> None:
        """Store each finish with its unsettled replies; raises StoreError (then nothing is removed,
        and the next sweep does it again: every write here can be repeated)."""
        for finish in self.finishes.values():
            if finish.replies:  # first, so that no finished row is left without its replies
                store.outbox_enqueue(list(finish.replies.values()), finish.envelope_id, list(finish.replies))
            store.finish(finish.envelope_id, [], finish.error)

    def mark_recovered(self) -> None:
        """Kept a while as `.recovered` (dated now), for the sweepers that read it late."""
        for path in self.paths:
            kept = path.with_name(path.name[:-len(SUFFIX)] + RECOVERED)
            try:
                os.utime(path)
                os.replace(path, kept)
            except OSError:
                pass


class FinishJournal:
    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        self._file = AppendFile(directory, owner, SUFFIX, "finishes the store has not taken")

    def record(self, envelope_id: str, replies: Sequence[Reply], error: str | None) -> bool:
        return self._file.append(_finish_line(envelope_id, replies, error))

    def settled(self, key: str) -> bool:
        """A reply posted (or failed for good) from this process's memory: never to be sent again."""
        return self._file.append(_line({"settled": key}))

    @property
    def size(self) -> int:
        return self._file.size

    def empty(self) -> None:
        self._file.empty()

    def rewrite(self, entries: Sequence[tuple[str, Sequence[Reply], str | None, set[str]]]) -> None:
        """The journal with only these entries: (envelope id, replies, error, keys settled)."""
        self._file.replace("".join(_finish_line(eid, replies, error) + "".join(_line({"settled": k}) for k in settled)
                                   for eid, replies, error, settled in entries))

    def close(self) -> None:
        self._file.close()

    def read_dead(self, look: DirLook | None = None) -> DeadFinishes:
        """The journals of this host's dead workers, read (not taken: every sweeper that reads one
        before its sweep knows what not to re-run); `DeadFinishes.mark_recovered` once recovered.
        Recovered journals past KEEP_RECOVERED_S are removed. `look`: the sweep's look at the directory."""
        dead = DeadFinishes()
        cutoff = time.time() - KEEP_RECOVERED_S
        for path in dead_files(self.directory, self.owner, SUFFIX, RECOVERED, look=look):
            if path.name.endswith(RECOVERED):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                except OSError:
                    pass
                continue
            text = read_text(path)
            if text is not None:
                dead.paths.append(path)
                _read_into(dead.finishes, text)
        return dead

    def finishes_of(self, owner: str) -> dict[str, JournaledFinish]:
        """What `owner` journaled, recovered or not (for a row the sweep took from it)."""
        finishes: dict[str, JournaledFinish] = {}
        for suffix in (RECOVERED, SUFFIX):
            text = read_text(self.directory / file_name(owner, suffix))
            if text is not None:
                _read_into(finishes, text)
        return finishes


def _read_into(finishes: dict[str, JournaledFinish], text: str) -> None:
    settled: set[str] = set()
    for line in text.splitlines():
        entry = _parse(line)
        if entry is None:
            continue
        if "settled" in entry:
            settled.add(str(entry["settled"]))
        elif "finish" in entry:
            eid = str(entry["finish"])
            replies = {reply_key(eid, i): Reply(**reply) for i, reply in enumerate(entry.get("replies") or [])}
            finishes[eid] = JournaledFinish(eid, entry.get("error"), replies)
    for finish in finishes.values():
        for key in settled & finish.replies.keys():
            del finish.replies[key]


def _finish_line(envelope_id: str, replies: Sequence[Reply], error: str | None) -> str:
    # Each field by name: dataclasses.asdict deep-copies, and made this line cost 17 us a finish.
    return _line({"finish": envelope_id, "error": error,
                  "replies": [{"channel": r.channel, "text": r.text, "blocks": r.blocks, "thread_ts": r.thread_ts}
                              for r in replies]})


def _line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=True) + "\n"


def _parse(line: str) -> dict[str, Any] | None:
    """One line; None for a line cut short by the kill (the last one may be)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None
