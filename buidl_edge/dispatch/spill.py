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

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.protocol import Envelope
from buidl_edge.store.owners import dead_here

log = logging.getLogger("buidl_edge.dispatch")

SUFFIX = ".spill"


def _file_name(owner: str) -> str:
    return owner.replace("/", "_") + SUFFIX


def spill_dir(state_dir: Path) -> Path:
    """In memory (/dev/shm) when there is one, so a full disk cannot refuse it: it only has to
    outlive a process, not the dyno. One per state dir, which is one stack and its store."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
        return shm / f"buidl-edge-spill-{digest}"
    return state_dir / "spill"


class Spill:
    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        self._fd: int | None = None
        self._failed = False  # said once

    def write(self, envelopes: Sequence[Envelope]) -> bool:
        """Append the burst (one line each); False when it could not be written (said once)."""
        lines = "".join((e.raw_text or json.dumps(e.to_dict(), separators=(",", ":"))).replace("\n", " ") + "\n"
                        for e in envelopes)
        try:
            if self._fd is None:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._fd = os.open(self.directory / _file_name(self.owner),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._fd, lines.encode("utf-8", "surrogatepass"))
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot keep envelopes acked before the store decided them in %s (%s): a kill -9 "
                            "now would lose them", self.directory, exc.strerror or exc)
            return False
        return True

    def empty(self) -> None:
        """Nothing is left undecided: the file holds nothing worth recovering."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass

    def take_dead(self) -> list[tuple[Path, list[Envelope]]]:
        """The spill files of this host's dead processes, each taken (renamed) by this process
        alone, with its envelopes; `done` removes one once its envelopes are claimed, `give_back`
        puts it back for the next sweep."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(SUFFIX)]
        except OSError:
            return []
        here = socket.gethostname()
        taken: list[tuple[Path, list[Envelope]]] = []
        for name in names:
            owner = name[:-len(SUFFIX)]
            if name == _file_name(self.owner) or not dead_here(owner, here):
                continue
            mine = self.directory / f"{name}.taken-{os.getpid()}"
            try:
                os.rename(self.directory / name, mine)  # atomic: another sweeper's rename of it fails
                text = mine.read_bytes().decode("utf-8", "surrogatepass")
            except OSError:
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
