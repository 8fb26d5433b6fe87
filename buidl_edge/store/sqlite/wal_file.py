"""How many frames the WAL holds now, read from the -wal file's own headers.

The file's size is no measure of that: after a RESTART checkpoint SQLite writes the WAL from its
start again and keeps the file at its largest size so far (cut back to `journal_size_limit` at
most). A WAL that refills below that mark does not change the file's size, and a checkpointer
pacing itself by the size did not see it (at 1,000 events/s with replies the WAL refilled to 64 MB
and past it between two rounds).

The WAL's format is documented (https://www.sqlite.org/fileformat2.html, "The WAL File Format"):
a 32-byte header whose salts change at every restart, then frames of a 24-byte header and one
page; a frame belongs to the WAL's current generation when its salts are the header's. The
-shm file's header holds the count too, but SQLite holds POSIX locks on that file, and closing
any descriptor of it in this process would drop them; the -wal file carries no locks.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

WAL_HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
_SALTS = slice(16, 24)  # in the WAL header; in a frame header they are bytes 8-16
_FRAME_SALTS = slice(8, 16)


def wal_frames(wal: Path) -> int:
    """Frames of the WAL's current generation (a binary search over the frame headers: about 15
    reads of 24 bytes for a 64 MB WAL). 0 when there is no WAL, or it cannot be read."""
    try:
        fd = os.open(wal, os.O_RDONLY)
    except OSError:
        return 0
    try:
        header = os.pread(fd, WAL_HEADER_BYTES, 0)
        if len(header) < WAL_HEADER_BYTES:
            return 0
        page_size = struct.unpack(">I", header[8:12])[0]
        frame_bytes = FRAME_HEADER_BYTES + page_size
        salts = header[_SALTS]

        def current(frame: int) -> bool:
            head = os.pread(fd, FRAME_HEADER_BYTES, WAL_HEADER_BYTES + frame * frame_bytes)
            return len(head) == FRAME_HEADER_BYTES and head[_FRAME_SALTS] == salts

        lo, hi = 0, max(0, os.fstat(fd).st_size - WAL_HEADER_BYTES) // frame_bytes
        while lo < hi:  # frames before `lo` are current; from `hi` on, none is
            mid = (lo + hi) // 2
            if current(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo
    except OSError:
        return 0
    finally:
        os.close(fd)
