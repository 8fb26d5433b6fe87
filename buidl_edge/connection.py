"""One Socket Mode connection: keeps a link open, refreshes it with overlap, backs off on drops.

A `ConnectionSlot` is what the user counts as "a connection". It owns one live
`Link` (one WebSocket) and, while a refresh overlaps, the retiring one too: the
old link keeps reading and acking until Slack closes it, so no envelope falls
into the gap. A stale (half-open) link is replaced the same way, replacement first,
except that nobody will ever close it for us: it is shut down once the replacement
is open, and nothing here ever waits on the peer to close a link.
"""
from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import gevent
import gevent.event
import gevent.lock
import websocket

from buidl_edge import protocol
from buidl_edge.config import ConfigError, Settings, proxy_for
from buidl_edge.observability import report_exception, report_protocol_error, trace_frame
from buidl_edge.store.slots import OVERLAP_SUFFIX, SlotGate, Waitable
from buidl_edge.webapi import FatalAuthError, RateLimited, SlackApiError, WebApi

log = logging.getLogger("buidl_edge.connection")

HELLO_TIMEOUT_S = 10.0
# A retiring link that Slack never closes is closed by us after this long.
RETIRE_TIMEOUT_S = 30.0
# How long a stale link's replacement waits for an overlap (this process's and an app-wide slot)
# before the stale link is torn down first; Slack never closes a half-open link for us.
STALE_OVERLAP_WAIT_S = 2.0
_link_ids = itertools.count(1)


class FatalStop(Exception):
    """Stop the worker, do not reconnect: Socket Mode is off or the token is refused."""

    def __init__(self, reason: str, connection: str | None = None) -> None:
        self.reason = reason
        self.connection = connection
        super().__init__(reason)


class EnvelopeSink(Protocol):
    def accept(self, envelope: protocol.Envelope, link: "Link", received_at: float) -> None:
        """Take one envelope read on `link`; must return quickly (the read loop waits)."""


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

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "disconnects"}
        data["disconnects"] = dict(self.disconnects)
        data["uptime"] = round(time.time() - self.connected_since, 3) if self.connected and self.connected_since else 0.0
        return data


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng(0.0, min(cap, base * (2 ** min(attempt, 30))))


class Link:
    """One WebSocket to Slack: reads frames, answers pings, sends acks."""

    def __init__(self, slot: "ConnectionSlot", ws: websocket.WebSocket, hello: protocol.Hello) -> None:
        self.slot = slot
        self.ws = ws
        self.hello = hello
        self.id = f"{slot.name}.{next(_link_ids)}"
        self.opened_at = time.monotonic()
        self.last_traffic = time.monotonic()
        # What ended or should end this link: "closed", "refresh", "stale", "fatal", "too_many", "stop".
        self.outcome: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self.dispatching = True
        self.closed = gevent.event.Event()

    @property
    def stats(self) -> ConnectionStats:
        return self.slot.stats

    def send_text(self, text: str) -> bool:
        # enable_multithread gives websocket-client a send lock (a gevent lock once patched),
        # so acks from many greenlets and its own pongs never interleave on the wire.
        trace_frame(self.slot.settings.websocket_debug, self.id, "out", text)
        try:
            self.ws.send(text)
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("send failed on %s: %s", self.id, type(exc).__name__, extra={"connection": self.id})
            return False
        self.stats.messages_sent += 1
        return True

    def ack(self, envelope_id: str, payload: dict[str, Any] | None, received_at: float) -> bool:
        try:
            frame = protocol.build_ack(envelope_id, payload)
        except protocol.ProtocolError as exc:
            log.error("ack payload refused (%s); acking without it", exc.reason,
                      extra={"connection": self.id, "envelope_id": envelope_id})
            frame = protocol.build_ack(envelope_id)
        if not self.send_text(frame):
            return False
        self.stats.envelopes_acked += 1
        self.stats.last_ack_latency_ms = round((time.monotonic() - received_at) * 1000, 3)
        return True

    def read_loop(self) -> None:
        try:
            while True:
                opcode, frame = self.ws.recv_data_frame(True)
                self.last_traffic = time.monotonic()
                if opcode in (websocket.ABNF.OPCODE_PONG, websocket.ABNF.OPCODE_PING):
                    self.stats.last_ping = time.time()
                    if self.slot.settings.websocket_debug:  # websocket-client answered a ping itself
                        ping = opcode == websocket.ABNF.OPCODE_PING
                        trace_frame(True, self.id, "in", "<ping>" if ping else "<pong>")
                        if ping:
                            trace_frame(True, self.id, "out", "<pong>")
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    trace_frame(self.slot.settings.websocket_debug, self.id, "in", "<close>")
                    break
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    self._on_text(frame.data)
        except (websocket.WebSocketException, OSError, AttributeError) as exc:
            # AttributeError: websocket-client's socket is None once closed under us.
            log.debug("link %s read ended: %s", self.id, type(exc).__name__, extra={"connection": self.id})
        except Exception as exc:  # a bug; the link is replaced like any that ended
            log.exception("link %s reader failed", self.id, extra={"connection": self.id})
            report_exception(exc, report="link_reader", connection=self.id)
        finally:
            # Nobody reads this link any more: close it, or Slack goes on routing envelopes to it.
            self.close()
            self.closed.set()
            self._settle("closed")

    def _on_text(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        trace_frame(self.slot.settings.websocket_debug, self.id, "in", text)
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
                self.slot.sink.accept(frame, self, received_at)
            # While draining, no ack: Slack redelivers it to a connection that stays up.
        elif isinstance(frame, protocol.Disconnect):
            self.stats.disconnects[frame.reason] = self.stats.disconnects.get(frame.reason, 0) + 1
            log.info("disconnect frame: %s", frame.reason, extra={"connection": self.id})
            if frame.is_fatal:
                self._settle("fatal")
            elif frame.reason == "too_many_websockets":
                self._settle("too_many")
            else:
                self._settle("refresh")
        elif isinstance(frame, protocol.Hello):
            log.debug("extra hello on %s", self.id)

    def _settle(self, outcome: str) -> None:
        if not self.outcome.ready():
            self.outcome.set(outcome)

    def keepalive(self) -> None:
        """Ping the server; the moment the link has been silent for the stale timeout, replace it."""
        settings = self.slot.settings
        next_ping = time.monotonic() + settings.ping_interval
        while True:
            # Wake for the next ping or when the silence reaches the stale timeout, whichever is first.
            wake_at = min(next_ping, self.last_traffic + settings.stale_timeout)
            if self.closed.wait(max(0.0, wake_at - time.monotonic())):
                return
            now = time.monotonic()
            if now >= self.last_traffic + settings.stale_timeout:
                if self.outcome.ready():  # retiring (replaced already): Slack's close may never come
                    log.warning("retiring link stale for %.1fs, closing", now - self.last_traffic,
                                extra={"connection": self.id})
                    self.close()
                    return
                log.warning("link stale for %.1fs, replacing", now - self.last_traffic,
                            extra={"connection": self.id})
                self._settle("stale")
                return
            if now < next_ping:
                continue
            next_ping = now + settings.ping_interval
            trace_frame(settings.websocket_debug, self.id, "out", "<ping>")
            try:
                self.ws.ping()
            except (websocket.WebSocketException, OSError, AttributeError):
                pass

    def close(self) -> None:
        """Tear the link down now, whatever Slack does (see `teardown`); safe to call again."""
        teardown(self.ws)


class ConnectionSlot:
    """Keeps one logical Socket Mode connection alive for the worker."""

    def __init__(self, name: str, settings: Settings, webapi: WebApi, sink: EnvelopeSink,
                 overlap: gevent.lock.Semaphore | None = None, gate: SlotGate | None = None) -> None:
        self.name = name
        # App-wide connection slots (store/slots.py): one lease per link, one more for a refresh overlap.
        self.gate = gate
        # Refresh overlaps open at once in this process (worker.refresh_overlaps): P x K + P x this
        # bounds the links open per app.
        self.overlap = overlap or gevent.lock.Semaphore(1)
        self._overlaps = 0
        self.settings = settings
        self.webapi = webapi
        self.sink = sink
        self.stats = ConnectionStats()
        self.links: list[Link] = []
        self._stopping = gevent.event.Event()
        self._opened_once = False

    def stop_dispatching(self) -> None:
        """First step of a drain: read on, but take no new envelopes."""
        self._stopping.set()
        for link in self.links:
            link.dispatching = False
            link._settle("stop")

    def close(self) -> None:
        for link in list(self.links):
            link.close()
        if self.gate is not None:  # the links are closed: the slot may go to another connection
            self.gate.release(self.name)

    def slot_lost(self) -> None:
        """The store gave this slot's lease to another connection: close, then wait for a slot."""
        for link in list(self.links):
            link._settle("slot_lost")

    def run(self) -> None:
        """Open, serve, refresh, reconnect until stopped. Raises FatalStop."""
        attempt = 0
        while not self._stopping.is_set():
            if self.gate is not None and not self.gate.acquire(self.name, self._stopping):
                break  # stopped while waiting for a slot
            try:
                link = self._open_link()
            except FatalAuthError as exc:
                raise FatalStop(f"Slack refused the app token: {exc.error}", self.name) from None
            except ConfigError as exc:  # a ws:// URL to a non-loopback host, a bad proxy: never downgrade
                raise FatalStop(f"refusing to connect: {exc}", self.name) from None
            except RateLimited as exc:
                delay = max(exc.retry_after, backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap))
                log.warning("apps.connections.open rate limited; retrying in %.1fs", delay,
                            extra={"connection": self.name})
                attempt += 1
                self._stopping.wait(delay)
                continue
            except (SlackApiError, websocket.WebSocketException, OSError, HelloMissing) as exc:
                delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
                log.warning("connect failed (%s); retrying in %.2fs", _describe(exc), delay,
                            extra={"connection": self.name})
                attempt += 1
                self._stopping.wait(delay)
                continue
            outcome = self._serve(link)
            if outcome == "fatal":
                raise FatalStop("Slack disabled Socket Mode for this app (link_disabled)", self.name)
            if outcome in ("refresh", "stale", "stop"):
                attempt = 0
                continue
            if time.monotonic() - link.opened_at >= self.settings.backoff_cap:
                attempt = 0  # it outlived the longest wait: a new failure, not a streak going on
            if outcome == "too_many":
                link.close()
            delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
            attempt += 1
            log.info("link %s %s; reconnecting in %.2fs (attempt %d)", link.id, outcome, delay, attempt,
                     extra={"connection": self.name})
            self._stopping.wait(delay)

    def _open_link(self) -> Link:
        try:
            return self._connect()
        finally:
            self._close_stale()  # its replacement is open, or could not be: a stale link has no use left

    def _connect(self) -> Link:
        url = self.webapi.open_connection(self.settings.app_token)
        trace_frame(self.settings.websocket_debug, self.name, "connect", url)  # the ticket is masked
        ws = websocket.create_connection(url, timeout=HELLO_TIMEOUT_S, enable_multithread=True,
                                         skip_utf8_validation=True, **websocket_options(url))
        try:
            hello = self._await_hello(ws)
        except BaseException:
            teardown(ws)
            raise
        ws.settimeout(None)
        link = Link(self, ws, hello)
        if self._opened_once:
            self.stats.reconnect_count += 1
        self._opened_once = True
        self.stats.connected = True
        self.stats.connected_since = time.time()
        log.info("connected (%s open for the app)", hello.num_connections, extra={"connection": link.id})
        return link

    def _await_hello(self, ws: websocket.WebSocket) -> protocol.Hello:
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while time.monotonic() < deadline:
            opcode, frame = ws.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise HelloMissing("closed before hello")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            text = frame.data.decode("utf-8", "replace")
            trace_frame(self.settings.websocket_debug, self.name, "in", text)
            try:
                parsed = protocol.parse_frame(text)
            except protocol.ProtocolError:
                continue
            if isinstance(parsed, protocol.Hello):
                return parsed
            if isinstance(parsed, protocol.Disconnect):
                if parsed.is_fatal:
                    raise FatalAuthError("socket", "link_disabled")
                raise HelloMissing(f"disconnect {parsed.reason} before hello")
        raise HelloMissing("no hello in time")

    def _serve(self, link: Link) -> str:
        """Run the link until it ends or must be replaced; a replaced link retires in the background."""
        self.links.append(link)
        reader = gevent.spawn(link.read_loop)
        pinger = gevent.spawn(link.keepalive)
        expiry = self._schedule_expiry_refresh(link)
        outcome = link.outcome.get()
        if expiry is not None:
            expiry.kill(block=False)
        if outcome in ("refresh", "stale") and not self._stopping.is_set():
            # As on a refresh, the replacement opens first: a stale link retires until it is open.
            extra = self._take_overlap(link, outcome)
            if extra is not None:
                gevent.spawn(self._retire, link, reader, pinger, True, extra or None)
                return outcome
        if outcome == "stop":
            gevent.spawn(self._retire, link, reader, pinger, False)
            return outcome
        link.close()
        reader.join(timeout=2)
        pinger.kill(block=False)
        self._forget(link)
        return outcome

    def _take_overlap(self, link: Link, outcome: str) -> str | None:
        """Hold what a replacement opened next to `link` needs: an overlap of this process and a slot.

        Returns the overlap slot's name ("" if the new link is to follow the old one on this slot's
        lease), or None: no overlap for a stale link, which then goes first.
        """
        give_up: Waitable
        if outcome == "refresh":
            self.overlap.acquire()  # the old link reads on meanwhile
            give_up = link.closed
        else:  # stale: Slack will never close it, so an overlap is only worth a short wait
            give_up = _Deadline(STALE_OVERLAP_WAIT_S)
            if not self.overlap.acquire(timeout=STALE_OVERLAP_WAIT_S):
                return None
        # The overlap needs a slot of its own (links retiring one after another each hold one);
        # if none frees up before the old link closes, the new link follows it on this slot's lease.
        self._overlaps += 1
        extra = f"{self.name}{OVERLAP_SUFFIX}{self._overlaps}"
        if self.gate is None or self.gate.acquire(extra, give_up):
            return extra if self.gate is not None else ""
        if outcome == "stale":
            self.overlap.release()
            return None
        return ""

    def _close_stale(self) -> None:
        for link in list(self.links):
            if link.outcome.ready() and link.outcome.value == "stale":
                link.close()

    def _schedule_expiry_refresh(self, link: Link) -> gevent.Greenlet | None:
        life = link.hello.approximate_connection_time
        if not life:
            return None
        lead = min(self.settings.refresh_lead, life / 2)
        return gevent.spawn_later(max(1.0, life - lead), link._settle, "refresh")

    def _retire(self, link: Link, reader: gevent.Greenlet, pinger: gevent.Greenlet, holds_overlap: bool,
                overlap_slot: str | None = None) -> None:
        """Keep reading and acking on the old link until Slack closes it (or we give up waiting)."""
        try:
            reader.join(timeout=RETIRE_TIMEOUT_S)
            link.close()  # whatever ended the reader, or if nothing did
            reader.join(timeout=2)
            pinger.kill(block=False)
            self._forget(link)
        finally:
            if holds_overlap:
                self.overlap.release()
            if overlap_slot and self.gate is not None:
                self.gate.release(overlap_slot)

    def _forget(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)
        self.stats.connected = any(not l.closed.is_set() for l in self.links)


def websocket_options(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Extra `create_connection` arguments: the proxy, chosen the way requests chooses it.

    websocket-client would read the proxy variables itself, with its own NO_PROXY rules; we pass
    our choice explicitly so the Web API and the WebSocket always agree. No `sslopt` is ever
    passed: websocket-client's default verifies the certificate and the host name.
    """
    proxy = proxy_for(url, env)
    if proxy is not None:
        return {"http_proxy_host": proxy.host, "http_proxy_port": proxy.port,
                "http_proxy_auth": proxy.auth, "proxy_type": "http"}
    env = os.environ if env is None else env
    configured = proxy_for(url, {k: v for k, v in env.items() if k.lower() != "no_proxy"})
    if configured is not None:  # a proxy is set but NO_PROXY exempts this host: go direct
        return {"http_proxy_host": configured.host, "http_proxy_port": configured.port, "http_no_proxy": ["*"]}
    return {}


def teardown(ws: websocket.WebSocket) -> None:
    """Close a WebSocket without waiting on anything the peer must do.

    websocket-client's own close() waits to read the close reply, on a read lock that the
    reader greenlet holds while it blocks in recv; on a half-open link that is forever. And a
    send can wait on the full buffer of a link the peer stopped reading. So the close frame goes
    only if it can go at once, then the socket is shut down both ways, which wakes the blocked
    reader (and any blocked send) with an error, and closed.
    """
    sock = ws.sock
    if sock is None:
        return
    if ws.connected and not ws.lock.locked():  # a send holding the lock is stuck: no close frame
        try:
            sock.settimeout(0)  # into the send buffer now, or not at all
            ws.send_close()
        except (websocket.WebSocketException, OSError):
            pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    ws.shutdown()


class _Deadline:
    """A `Waitable` that becomes set after `seconds`: a bounded wait for the slot gate."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def is_set(self) -> bool:
        return time.monotonic() >= self.at

    def wait(self, timeout: float | None = None) -> bool:
        left = self.at - time.monotonic()
        gevent.sleep(max(0.0, left if timeout is None else min(timeout, left)))
        return self.is_set()


class HelloMissing(Exception):
    """The socket opened but Slack never said hello."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return exc.error
    return type(exc).__name__
