"""Envelopes acked before the store decided them, kept in a file until it has: safe from kill -9.

Past BUIDL_CLAIM_WAIT_S an envelope is acked while its claim still waits for the store (a held
write lock, a full disk, Redis away). Until the store decides it, the claim lives only in this
process; a worker killed then would lose an envelope Slack will never send again. So before such
an ack, the burst is appended to this process's spill file (one write: it reaches the OS, which
outlives the process). A process with nothing left undecided empties its file. The sweep of any
live worker on the host takes the file of a dead one (a rename, so only one does), claims each
envelope in the store and hands on those the store says are new.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.spill_files import AppendFile, DirLook, dead_files, read_text

SUFFIX = ".spill"


class Spill:
    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        self._file = AppendFile(directory, owner, SUFFIX, "envelopes acked before the store decided them")

    def write(self, envelopes: Sequence[Envelope]) -> bool:
        """Append the burst (one line each); False when it could not be written (said once)."""
        return self._file.append("".join(
            (e.raw_text or json.dumps(e.to_dict(), separators=(",", ":"))).replace("\n", " ") + "\n"
            for e in envelopes))

    def empty(self) -> None:
        """Nothing is left undecided: the file holds nothing worth recovering."""
        self._file.empty()

    def take_dead(self, look: DirLook | None = None) -> list[tuple[Path, list[Envelope]]]:
        """The spill files of this host's dead processes, each taken (renamed) by this process
        alone, with its envelopes; `done` removes one once its envelopes are claimed, `give_back`
        puts it back for the next sweep. `look`: the sweep's look at the directory."""
        taken: list[tuple[Path, list[Envelope]]] = []
        for path in dead_files(self.directory, self.owner, SUFFIX, look=look):
            mine = path.with_name(f"{path.name}.taken-{os.getpid()}")
            try:
                os.rename(path, mine)  # atomic: another sweeper's rename of it fails
            except OSError:
                continue
            text = read_text(mine)
            if text is None:
                continue
            envelopes = [frame for line in text.splitlines() if line.strip()
                         if isinstance(frame := protocol.parse_frame(line), Envelope)]
            taken.append((mine, envelopes))
        return taken

    @staticmethod
    def done(path: Path) -> None:
        path.unlink(missing_ok=True)

    @staticmethod
    def give_back(path: Path) -> None:
        try:
            os.rename(path, path.with_name(path.name.split(".taken-")[0]))
        except OSError:
            pass

    def close(self) -> None:
        self._file.close()
