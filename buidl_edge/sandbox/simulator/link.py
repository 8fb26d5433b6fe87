"""One server-side Socket Mode connection: its state and its socket writes.

All writes go through a per-link queue drained by one writer greenlet, so
that injecting an event never blocks on a slow client and frames keep their
order (a `disconnect` frame is followed by its close, not overtaken by it).

A blackholed link is a half-open one as a NAT or load balancer leaves it: the
server neither reads nor writes (no pings, no pongs, no envelopes reach the
wire) and sends no FIN, while the hub still counts it open and routes to it.
"""
from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import monkey
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Queue
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.websocket import Header, WebSocket

# Queue items: (what, data). "text" sends a text frame, "ping" a ping
# control frame, "frame" (opcode, payload) any frame, "close" a close frame
# then the socket, None stops the writer.
Item = tuple[str, Any] | None
MAX_BATCH = 256
_NOTHING: tuple[str, Any] = ("", None)  # batch ended, no control item to run
CLOSE_GRACE_S = 1.0  # how long a client gets to answer our close frame
HOLE_POLL_S = 0.1  # how often a blackholed link looks whether its client has gone
# The real poll(2), not gevent's: only it knows POLLRDHUP, the peer's FIN seen without reading.
_poll = monkey.get_original("select", "poll")


class SimWebSocket(WebSocket):
    """geventwebsocket's socket plus a write lock and activity/silence hooks.

    The base class uses __slots__, so per-connection data rides in `environ`.
    """

    __slots__ = ()

    def _link(self) -> Link | None:
        env = self.environ
        return env.get("sim.link") if env else None

    def send_frame(self, message: Any, opcode: int) -> None:
        # The reader greenlet answers pings while the writer sends: serialise.
        env = self.environ
        lock = env.get("sim.wlock") if env else None
        if lock is None:
            return super().send_frame(message, opcode)
        with lock:
            return super().send_frame(message, opcode)

    def handle_ping(self, header: Any, payload: bytes) -> None:
        link = self._link()
        if link is not None:
            link.last_client_activity = time.monotonic()
            if link.silenced(link.last_client_activity):
                return  # a silenced link answers nothing
        super().handle_ping(header, payload)

    def handle_pong(self, header: Any, payload: bytes) -> None:
        link = self._link()
        if link is not None:
            link.last_client_activity = time.monotonic()


@dataclass(eq=False)
class Link:
    id: str
    ws: SimWebSocket
    sock: socket.socket | None
    opened_at: float
    state: str = "open"  # open | warned | closing | closed
    hello_sent: bool = False
    closed_at: float | None = None
    envelopes_sent: int = 0
    acks: int = 0
    silenced_until: float = 0.0
    blackholed: bool = False
    blackhole_until: float | None = None  # None: until the client's side goes away
    hole: Event = field(default_factory=Event)  # set when blackholed: the link stops reading
    last_client_activity: float = field(default_factory=time.monotonic)
    last_ping: float = field(default_factory=time.monotonic)
    outbox: Queue = field(default_factory=Queue)

    def silenced(self, now: float) -> bool:
        return now < self.silenced_until

    @property
    def is_open(self) -> bool:
        return self.state in ("open", "warned")

    def put(self, what: str, data: Any = None) -> None:
        if self.state != "closed":
            self.outbox.put((what, data))

    def blackhole(self, seconds: float | None) -> None:
        """Go silent at TCP level: stop reading and writing, send no FIN (see run_link)."""
        self.blackholed = True
        self.blackhole_until = None if seconds is None else time.monotonic() + seconds
        self.hole.set()

    def end_blackhole(self) -> None:
        """The hole ends as Slack ends a link it finally gave up on: dropped, no close frame."""
        if self.blackholed:
            self.blackhole_until = time.monotonic()

    def hold_blackhole(self) -> None:
        """Neither read nor write until the fault ends or the client's side is gone; then drop.

        Noticing the client's FIN (or RST) without reading is what keeps a test's
        blackholed link from outliving the client that left it.
        """
        while self.blackhole_until is None or time.monotonic() < self.blackhole_until:
            if client_gone(self.sock):
                break
            gevent.sleep(HOLE_POLL_S)
        self.drop()

    def drop(self) -> None:
        """Abrupt end: the TCP socket goes away without a close frame."""
        self.state = "closing"
        _shutdown(self.sock)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "envelopes_sent": self.envelopes_sent,
            "acks": self.acks,
            "silenced": self.silenced(now),
            "blackholed": self.blackholed,
            "last_client_activity_s_ago": round(now - self.last_client_activity, 3),
        }


def attach(ws: WebSocket, link_id: str) -> Link:
    ws.__class__ = SimWebSocket  # same slots, so the swap is safe
    ws.environ["sim.wlock"] = Semaphore()
    link = Link(id=link_id, ws=ws, sock=getattr(ws.handler, "socket", None), opened_at=time.time())
    ws.environ["sim.link"] = link
    return link


def run_writer(link: Link) -> None:
    """Drain the link's queue onto the socket until told to stop or it breaks.

    Text frames waiting together go out in one write: far fewer syscalls
    when thousands of envelopes per second are queued.
    """
    ws = link.ws
    while True:
        item = link.outbox.get()
        wait = link.silenced_until - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)  # silence: hold everything back
        if link.blackholed:  # whatever is sent into the hole never reaches the wire
            if item is None:
                return
            continue
        batch: list[bytes] = []
        while item is not None and item[0] == "text":
            batch.append(_text_frame(item[1]))
            if len(batch) >= MAX_BATCH or link.outbox.empty():
                item = _NOTHING
                break
            item = link.outbox.get_nowait()
        try:
            if batch:
                _write(ws, b"".join(batch))
            if item is None:
                return  # stop sentinel
            what, data = item
            if what == "ping":
                ws.send_frame(data, WebSocket.OPCODE_PING)
            elif what == "frame":
                ws.send_frame(data[1], data[0])
            elif what == "close":
                link.state = "closing"
                ws.close(1000, b"")
                gevent.spawn_later(CLOSE_GRACE_S, _shutdown, link.sock)
                return
        except (WebSocketError, OSError):
            return


def _text_frame(text: str) -> bytes:
    data = text.encode("utf-8")
    return Header.encode_header(True, WebSocket.OPCODE_TEXT, b"", len(data), 0) + data


def _write(ws: WebSocket, data: bytes) -> None:
    env = ws.environ
    if ws.closed or not env:
        raise WebSocketError("closed")
    with env["sim.wlock"]:
        ws.raw_write(data)


def client_gone(sock: socket.socket | None) -> bool:
    """Whether the peer shut its side down or reset, found without reading a byte."""
    if sock is None:
        return True
    try:
        poller = _poll()
        poller.register(sock.fileno(), select.POLLRDHUP)
        return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                   for _, events in poller.poll(0))
    except (OSError, ValueError):  # closed already
        return True


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
