"""One WebSocket to Slack: reads frames, answers pings, sends acks, and says how it ended.

A `Link` knows nothing of reconnecting: it ends with a `LinkOutcome` (set once, by
`end`), and its `ConnectionSlot` decides what comes next. Tearing a link down never
waits on the peer (see `teardown`).
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.lock
import websocket

from buidl_edge.config import Settings
from buidl_edge.observability.latency import LatencyHistogram
from buidl_edge.observability.logs import trace_frame
from buidl_edge.observability.sentry import report_exception, report_protocol_error
from buidl_edge.socketmode import protocol, wsframes
from buidl_edge.socketmode.link_outcomes import LinkOutcome

log = logging.getLogger("buidl_edge.connection")


@dataclass(frozen=True, slots=True)
class Ack:
    """An ack for the link to write: the envelope's id, the payload it carries (if any), and when
    the envelope was read (for the ack latency)."""

    envelope_id: str
    payload: dict[str, Any] | None
    received_at: float


class LaterAcks(Protocol):
    """Where acks decided after `accept` returned go: one link's writer (never the link itself)."""

    connection: str

    def put(self, ack: Ack) -> object: ...  # what it returns (a link's write: sent or not) goes unused


class EnvelopeSink(Protocol):
    def accept(self, burst: Sequence[tuple[protocol.Envelope, float]], later: LaterAcks) -> list[Ack]:
        """Take the envelopes of one read, each with the monotonic time it was read, and return
        the acks decided now (the reader writes them with the rest of its burst); acks decided
        later go to `later`. Must return quickly (the read loop waits)."""


class _LinkAcks:
    """The `LaterAcks` a link hands its sink: acks written at once, under the link's send lock."""

    __slots__ = ("connection", "put")

    def __init__(self, connection: str, write: Callable[[Ack], bool]) -> None:
        self.connection = connection
        self.put = write


@dataclass
class ConnectionStats:
    """Per-connection figures, named as in the Buidl API plus envelope counters."""

    connected: bool = False
    reconnect_count: int = 0
    last_ping: float | None = None
    connected_since: float | None = None
    messages_sent: int = 0
    envelopes_received: int = 0
    envelopes_acked: int = 0
    envelopes_rejected: int = 0
    last_ack_latency_ms: float | None = None
    disconnects: dict[str, int] = field(default_factory=dict)
    # Why each link ended (refresh, stale, closed, …): the metrics' reconnects by reason.
    link_ends: dict[str, int] = field(default_factory=dict)
    ack_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("disconnects", "link_ends", "ack_latency")}
        data["disconnects"] = dict(self.disconnects)
        data["link_ends"] = dict(self.link_ends)
        data["ack_latency"] = self.ack_latency.as_dict()
        data["uptime"] = (round(time.time() - self.connected_since, 3)
                          if self.connected and self.connected_since else 0.0)
        return data


class Link:
    """One WebSocket to Slack, named `id` (`c0.3`), counting into its connection's `stats`."""

    def __init__(self, link_id: str, ws: websocket.WebSocket, hello: protocol.Hello, settings: Settings,
                 stats: ConnectionStats, sink: EnvelopeSink) -> None:
        self.id = link_id
        self.ws = ws  # opened the link (TLS, proxy, handshake); frames go through wsframes from here
        self.sock = ws.sock
        self.hello = hello
        self.settings = settings
        self.stats = stats
        self.sink = sink
        self.opened_at = time.monotonic()
        self.last_traffic = time.monotonic()
        self._outcome: gevent.event.AsyncResult[LinkOutcome] = gevent.event.AsyncResult()
        self.dispatching = True
        self.closed = gevent.event.Event()
        self._parser = wsframes.FrameParser()
        self._send_lock = gevent.lock.Semaphore()
        # While the reader works through one recv's frames, what it sends (acks, pongs) waits
        # here and leaves in one write at the end of the burst.
        self._held: list[bytes] = []
        self._later = _LinkAcks(link_id, self.ack)
        # The envelopes of one recv go to the sink together: one commit claims them all.
        self._burst: list[tuple[protocol.Envelope, float]] = []

    def end(self, outcome: LinkOutcome) -> None:
        """Say why this link ends; the first reason given is the one that counts."""
        if not self._outcome.ready():
            self._outcome.set(outcome)

    def wait_end(self) -> LinkOutcome:
        """Block until `end` is called; the outcome."""
        return self._outcome.get()  # type: ignore[return-value]  # blocks until end() set one: never None

    @property
    def ending(self) -> LinkOutcome | None:
        """The outcome, once there is one."""
        return self._outcome.value if self._outcome.ready() else None

    def send_text(self, text: str) -> bool:
        """Write a text frame now (not part of a read burst)."""
        trace_frame(self.settings.websocket_debug, self.id, "out", text)
        if not self._write(wsframes.encode(wsframes.OP_TEXT, text.encode())):
            return False
        self.stats.messages_sent += 1
        return True

    def _write(self, data: bytes) -> bool:
        # One lock for every writer (acks from many greenlets, pongs, pings): frames never interleave.
        try:
            with self._send_lock:
                self.sock.sendall(data)  # type: ignore[union-attr]  # None: the AttributeError below
        except (OSError, AttributeError) as exc:  # AttributeError: the socket is gone
            log.warning("send failed on %s: %s", self.id, type(exc).__name__, extra={"connection": self.id})
            return False
        return True

    def _flush(self) -> None:
        held, self._held = self._held, []
        if held:
            self._write(held[0] if len(held) == 1 else b"".join(held))

    def ack(self, ack: Ack) -> bool:
        """Write one ack now (one decided after its burst was read)."""
        if not self.send_text(self._ack_text(ack)):
            return False
        self._acked(ack)
        return True

    def _hold_acks(self, acks: list[Ack]) -> None:
        """The acks of the burst being read: out in the reader's one write at its end."""
        debug = self.settings.websocket_debug
        for ack in acks:
            text = self._ack_text(ack)
            trace_frame(debug, self.id, "out", text)
            self._held.append(wsframes.encode(wsframes.OP_TEXT, text.encode()))
            self.stats.messages_sent += 1
            self._acked(ack)

    def _ack_text(self, ack: Ack) -> str:
        try:
            return protocol.build_ack(ack.envelope_id, ack.payload)
        except protocol.ProtocolError as exc:
            log.error("ack payload refused (%s); acking without it", exc.reason,
                      extra={"connection": self.id, "envelope_id": ack.envelope_id})
            return protocol.build_ack(ack.envelope_id)

    def _acked(self, ack: Ack) -> None:
        self.stats.envelopes_acked += 1
        latency = time.monotonic() - ack.received_at
        self.stats.last_ack_latency_ms = round(latency * 1000, 3)
        self.stats.ack_latency.observe(latency)

    def read_loop(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)  # type: ignore[union-attr]  # None: the AttributeError below
                if not data:
                    break
                self.last_traffic = time.monotonic()
                try:
                    for opcode, payload in self._parser.feed(data):
                        if not self._on_frame(opcode, payload):
                            return
                finally:
                    self._hand_over()
                    self._flush()
        except (OSError, AttributeError, wsframes.FrameError) as exc:
            # AttributeError: the socket is None once closed under us.
            log.debug("link %s read ended: %s", self.id, type(exc).__name__, extra={"connection": self.id})
        except Exception as exc:  # a bug; the link is replaced like any that ended
            log.exception("link %s reader failed", self.id, extra={"connection": self.id})
            report_exception(exc, report="link_reader", connection=self.id)
        finally:
            # Nobody reads this link any more: close it, or Slack goes on routing envelopes to it.
            self.close()
            self.closed.set()
            self.end(LinkOutcome.CLOSED)

    def _hand_over(self) -> None:
        burst, self._burst = self._burst, []
        if burst:
            self._hold_acks(self.sink.accept(burst, self._later))

    def _on_frame(self, opcode: int, payload: bytes) -> bool:
        """Handle one frame; False once the peer closed."""
        debug = self.settings.websocket_debug
        if opcode in (wsframes.OP_TEXT, wsframes.OP_BINARY):
            self._on_text(payload)
        elif opcode == wsframes.OP_PING:
            self.stats.last_ping = time.time()
            trace_frame(debug, self.id, "in", "<ping>")
            trace_frame(debug, self.id, "out", "<pong>")
            self._held.append(wsframes.encode(wsframes.OP_PONG, payload))  # out with the burst
        elif opcode == wsframes.OP_PONG:
            self.stats.last_ping = time.time()
            trace_frame(debug, self.id, "in", "<pong>")
        elif opcode == wsframes.OP_CLOSE:
            trace_frame(debug, self.id, "in", "<close>")
            return False
        return True

    def _on_text(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        trace_frame(self.settings.websocket_debug, self.id, "in", text)
        received_at = time.monotonic()
        try:
            frame = protocol.parse_frame(text)
        except protocol.ProtocolError as exc:
            self.stats.envelopes_rejected += 1
            log.warning("bad frame rejected: %s", exc.reason, extra={"connection": self.id})
            report_protocol_error(exc.reason, self.id)
            return
        if isinstance(frame, protocol.Envelope):
            self.stats.envelopes_received += 1
            if self.dispatching:
                self._burst.append((frame, received_at))
            # While draining, no ack: Slack redelivers it to a connection that stays up.
        elif isinstance(frame, protocol.Disconnect):
            self.stats.disconnects[frame.reason] = self.stats.disconnects.get(frame.reason, 0) + 1
            log.info("disconnect frame: %s", frame.reason, extra={"connection": self.id})
            self.end(disconnect_outcome(frame))
        elif isinstance(frame, protocol.Hello):
            log.debug("extra hello on %s", self.id)

    def keepalive(self) -> None:
        """Ping the server; the moment the link has been silent for the stale timeout, replace it."""
        settings = self.settings
        next_ping = time.monotonic() + settings.ping_interval
        while True:
            # Wake for the next ping or when the silence reaches the stale timeout, whichever is first.
            wake_at = min(next_ping, self.last_traffic + settings.stale_timeout)
            if self.closed.wait(max(0.0, wake_at - time.monotonic())):
                return
            now = time.monotonic()
            if now >= self.last_traffic + settings.stale_timeout:
                if self.ending is not None:  # retiring (replaced already): Slack's close may never come
                    log.warning("retiring link stale for %.1fs, closing", now - self.last_traffic,
                                extra={"connection": self.id})
                    self.close()
                    return
                log.warning("link stale for %.1fs, replacing", now - self.last_traffic,
                            extra={"connection": self.id})
                self.end(LinkOutcome.STALE)
                return
            if now < next_ping:
                continue
            next_ping = now + settings.ping_interval
            trace_frame(settings.websocket_debug, self.id, "out", "<ping>")
            self._write(wsframes.encode(wsframes.OP_PING, b""))

    def close(self) -> None:
        """Tear the link down now, whatever Slack does (see `teardown`); safe to call again."""
        teardown(self.ws, self._send_lock)


def disconnect_outcome(frame: protocol.Disconnect) -> LinkOutcome:
    """What a disconnect frame asks of the link, by the frame's own classification."""
    if frame.is_fatal:
        return LinkOutcome.FATAL
    if frame.is_too_many:
        return LinkOutcome.TOO_MANY
    return LinkOutcome.REFRESH  # frame.is_refresh: Slack closes the link soon; its replacement opens first


def teardown(ws: websocket.WebSocket, send_lock: Any = None) -> None:
    """Close a WebSocket without waiting on anything the peer must do.

    A polite close waits to read the close reply, which on a half-open link never comes; and
    a send can wait on the full buffer of a link the peer stopped reading. So the close frame
    goes only if it can go at once (no send is stuck holding the lock, and the buffer takes it
    now), then the socket is shut down both ways, which wakes the blocked reader (and any
    blocked send) with an error, and closed.
    """
    sock = ws.sock
    if sock is None:
        return
    lock = send_lock if send_lock is not None else ws.lock
    if ws.connected and not lock.locked():  # a send holding the lock is stuck: no close frame
        try:
            sock.settimeout(0)  # into the send buffer now, or not at all
            sock.send(wsframes.encode(wsframes.OP_CLOSE, wsframes.close_payload()))
        except (websocket.WebSocketException, OSError):
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    ws.shutdown()
