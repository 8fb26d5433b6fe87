"""WebSocket frames (RFC 6455) for the client side of a link that is already open: no I/O.

websocket-client opens the link (TLS with certificate and host-name checks, the proxy, the
handshake); after that the link reads and writes frames through this codec instead. Why our
own, for this part only: websocket-client reads one frame with two or three `recv` calls
(header, length, payload) and answers each with its own `send`, so every envelope cost
several syscalls and hub switches; here one `recv` of up to 64 KB yields every frame in it,
and a burst's acks leave in one `send`. Measured in scripts/bench.py (BENCHMARKS.md).
"""
from __future__ import annotations

import os
import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA = (OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
# A message this big is not Slack's: the link is ended rather than buffered without bound.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class FrameError(Exception):
    """The peer broke the framing (a reserved opcode, a bad continuation, an oversized message)."""


class FrameParser:
    """Feed bytes as they arrive; get back whole messages and control frames, in order."""

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []  # a fragmented message so far
        self._opcode = 0
        self._size = 0
        self.max_message = max_message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if length > self.max_message:
                raise FrameError(f"frame of {length} bytes")
            if end - pos < head + length:
                break
            payload = bytes(buf[pos + head:pos + head + length])
            if masked:  # servers must not mask, but a masked frame is still readable
                payload = unmask(payload, bytes(buf[pos + head - 4:pos + head]))
            pos += head + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload, out)
        del buf[:pos]
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode in _CONTROL:
            if not fin or len(payload) > 125:
                raise FrameError("fragmented or oversized control frame")
            out.append((opcode, payload))
            return
        if opcode in _DATA:
            if self._parts:
                raise FrameError("a new message inside a fragmented one")
            if fin:
                out.append((opcode, payload))
                return
            self._opcode, self._parts, self._size = opcode, [payload], len(payload)
            return
        if opcode != OP_CONTINUATION:
            raise FrameError(f"reserved opcode {opcode:#x}")
        if not self._parts:
            raise FrameError("continuation without a message")
        self._parts.append(payload)
        self._size += len(payload)
        if self._size > self.max_message:
            raise FrameError(f"message of over {self.max_message} bytes")
        if fin:
            out.append((self._opcode, b"".join(self._parts)))
            self._parts = []


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, as one big-integer operation (fast in CPython)."""
    n = len(payload)
    if not n:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (clients must mask: RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def close_payload(code: int = 1000) -> bytes:
    return struct.pack("!H", code)
