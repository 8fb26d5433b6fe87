"""Per-process files that outlive a kill -9 and a full disk: where a worker keeps what the store
could not take yet (the envelopes it acked undecided, the finishes it could not store).

Each file belongs to one process (`host:pid`) and is only appended to: one `os.write` reaches the
OS, which outlives the process. The files live in memory (/dev/shm) when there is one, so a full
disk cannot refuse them; they only have to outlive a process, not the dyno. A live worker of the
host reads the files of its dead siblings (`dead_files`, one look a sweep: `DirLook`) and settles them with the store.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

from buidl_edge.store.owners import dead_here

log = logging.getLogger("buidl_edge.store")


def spill_dir(state_dir: Path) -> Path:
    """In /dev/shm when it is writable, else in the state dir. One per state dir, which is one
    stack and its store."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:12]
        return shm / f"buidl-edge-spill-{digest}"
    return state_dir / "spill"


def file_name(owner: str, suffix: str) -> str:
    return owner.replace("/", "_") + suffix


class AppendFile:
    """This process's file of one kind: appended to, emptied when nothing in it is needed any more."""

    def __init__(self, directory: Path, owner: str, suffix: str, what: str) -> None:
        """`what`: what the file keeps, for the one warning when it cannot be written."""
        self.directory = directory
        self.path = directory / file_name(owner, suffix)
        self._what = what
        self._fd: int | None = None
        self._failed = False  # said once
        self.size = 0  # bytes in the file (as this process wrote them)

    def append(self, text: str) -> bool:
        """Append lines (each ending in a newline) in one write; False when it failed (said once)."""
        try:
            if self._fd is None:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self.size += os.write(self._fd, text.encode("utf-8", "surrogatepass"))
        except OSError as exc:
            self._say_failed(exc)
            return False
        return True

    def empty(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                self.size = 0
            except OSError:
                pass

    def replace(self, text: str) -> None:
        """The file's whole content, at once (a new file renamed over it): never half of either."""
        data = text.encode("utf-8", "surrogatepass")
        fresh = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.replace(fresh, self.path)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            self._say_failed(exc)
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self.size = len(data)

    def _say_failed(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            log.warning("cannot keep %s in %s (%s): a kill -9 now would lose them", self._what,
                        self.directory, exc.strerror or exc)

    def close(self) -> None:
        """At exit: an empty file is removed (one with something in it is left for a live worker)."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_size == 0:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


class DirLook:
    """One sweep's look at the spill directory: each directory listed once, each owner's process
    judged once, whichever of its files (journal, spill) is asked for. A dead worker's journal is
    then read in the same sweep as its spill file is taken, never the one without the other."""

    def __init__(self) -> None:
        self._names: dict[Path, list[str]] = {}
        self._dead: dict[str, bool] = {}
        self._here = socket.gethostname()

    def names(self, directory: Path) -> list[str]:
        if directory not in self._names:
            try:
                self._names[directory] = os.listdir(directory)
            except OSError:
                self._names[directory] = []
        return self._names[directory]

    def dead(self, owner: str) -> bool:
        if owner not in self._dead:
            self._dead[owner] = dead_here(owner, self._here)
        return self._dead[owner]


def dead_files(directory: Path, own_owner: str, *suffixes: str, look: DirLook | None = None) -> list[Path]:
    """The files of these kinds left by this host's dead processes (never this process's own).
    `look`: the sweep's one look at the directory, shared by its readers (a sweep looks every
    chores' round)."""
    look = look or DirLook()
    found = []
    for name in look.names(directory):
        suffix = next((s for s in suffixes if name.endswith(s)), None)
        if suffix is not None and name != file_name(own_owner, suffix) and look.dead(name[:-len(suffix)]):
            found.append(directory / name)
    return found


def read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "surrogatepass")
    except OSError:
        return None
