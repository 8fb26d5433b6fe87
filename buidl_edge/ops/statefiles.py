"""State files private to their owner: directories we create 0700, files 0600, from the moment they exist.

The store holds every envelope in full (message text, Slack's payload token, any token a user
pasted), so neither group nor others may read it, not even for the instant between a create
under the umask and a later chmod. A directory we did not create (/tmp, a home directory) is
never chmod-ed: only what we make is ours to decide. Imports nothing of ours.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def _missing(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    return missing


def private_dir(path: Path) -> Path:
    """Create `path` and each missing parent 0700; directories already there are left as they are."""
    for folder in reversed(_missing(path)):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            continue  # another process made it first: not ours to chmod
        os.chmod(folder, PRIVATE_DIR)  # exactly 0700, whatever the umask took away or left
    return path


def private_file(path: Path) -> Path:
    """Make sure `path` exists as a 0600 file: created so, or an existing one of ours tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        tighten(path)
    else:
        os.fchmod(fd, PRIVATE_FILE)
        os.close(fd)
    return path


def tighten(path: Path) -> bool:
    """Drop group and other permissions from a file we own; True if its mode changed.

    A file left by an older version (0644 under the usual umask) becomes 0600; a missing
    file or one owned by someone else is left alone.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode) or not mode & 0o077 or info.st_uid != os.getuid():
        return False
    os.chmod(path, mode & 0o700)
    return True


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically, as a 0600 file (a rename of a private temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def unusable_dir(path: Path) -> str | None:
    """Why `path` cannot hold private state files, in a few words (None when it can).

    Tried for real, since only the kernel knows (a read-only mount, /proc, a full quota): the
    missing directories are made as `private_dir` makes them and a private file is written and
    removed in `path`; what this made is removed again, so a check leaves nothing behind.
    """
    missing = _missing(path)
    nearest = missing[-1].parent if missing else path
    if not nearest.is_dir():
        return f"{nearest} is not a directory"
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder, PRIVATE_DIR)
            except FileExistsError:
                continue
            except OSError as exc:
                return f"cannot create {folder}: {exc.strerror or exc}"
            made.append(folder)
        probe = path / f".probe.{os.getpid()}"
        try:
            write_private(probe, "")
            probe.unlink()
        except OSError as exc:
            return f"cannot write in {path}: {exc.strerror or exc}"
        return None
    finally:
        for folder in reversed(made):
            try:
                os.rmdir(folder)
            except OSError:
                pass  # something else wrote there meanwhile: not ours to remove
