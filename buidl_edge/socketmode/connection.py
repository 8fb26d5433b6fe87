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
import time

import gevent
import gevent.event
import gevent.lock
import websocket

from buidl_edge.config import SLACK_MAX_CONNECTIONS, ConfigError, Settings, websocket_options
from buidl_edge.observability.logs import trace_frame
from buidl_edge.socketmode import protocol
from buidl_edge.socketmode.backoff import backoff_delay
from buidl_edge.socketmode.link import ConnectionStats, EnvelopeSink, Link, teardown
from buidl_edge.socketmode.link_outcomes import BACK_OFF, RECONNECT_AT_ONCE, REPLACE_FIRST, STOP_FOR_GOOD, LinkOutcome
from buidl_edge.store.slots import OVERLAP_SUFFIX, SlotGate, Waitable
from buidl_edge.webapi.client import FatalAuthError, RateLimited, SlackApiError, WebApi

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


class SocketModeDisabled(Exception):
    """Slack said `link_disabled` before hello: Socket Mode is off for this app (not a token problem)."""

    message = "Slack disabled Socket Mode for this app (link_disabled)"

    def __init__(self) -> None:
        super().__init__(self.message)


class HelloMissing(Exception):
    """The socket opened but Slack never said hello."""


class ConnectionSlot:
    """Keeps one logical Socket Mode connection alive for the worker."""

    def __init__(self, name: str, settings: Settings, webapi: WebApi, sink: EnvelopeSink, gate: SlotGate,
                 overlap: gevent.lock.Semaphore | None = None) -> None:
        self.name = name
        # App-wide connection slots (store/slots.py): one lease per link, one more for a refresh overlap.
        self.gate = gate
        # Refresh overlaps open at once in this process (refresh_overlaps, below): P x K + P x this
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
            link.end(LinkOutcome.STOP)

    def close(self) -> None:
        for link in list(self.links):
            link.close()
        self.gate.release(self.name)  # the links are closed: the slot may go to another connection

    def slot_lost(self) -> None:
        """The store gave this slot's lease to another connection: close, then wait for a slot."""
        for link in list(self.links):
            link.end(LinkOutcome.SLOT_LOST)

    def run(self) -> None:
        """Open, serve, refresh, reconnect until stopped. Raises FatalStop."""
        attempt = 0
        while not self._stopping.is_set():
            if not self.gate.acquire(self.name, self._stopping):
                break  # stopped while waiting for a slot
            try:
                link = self._open_link()
            except FatalAuthError as exc:
                raise FatalStop(f"Slack refused the app token: {exc.error}", self.name) from None
            except SocketModeDisabled as exc:
                raise FatalStop(str(exc), self.name) from None
            except ConfigError as exc:  # a ws:// URL to a non-loopback host, a bad proxy: never downgrade
                raise FatalStop(f"refusing to connect: {exc}", self.name) from None
            except RateLimited as exc:
                backoff = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
                delay = max(exc.retry_after, backoff)
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
            if outcome in STOP_FOR_GOOD:
                raise FatalStop(SocketModeDisabled.message, self.name)
            if outcome in RECONNECT_AT_ONCE:
                attempt = 0
            elif outcome in BACK_OFF:  # _serve closed the link (too_many: close first, then back off)
                attempt = self._back_off(link, outcome, attempt)

    def _back_off(self, link: Link, outcome: LinkOutcome, attempt: int) -> int:
        """Wait a jittered backoff after a link that failed; the next attempt's number."""
        if time.monotonic() - link.opened_at >= self.settings.backoff_cap:
            attempt = 0  # it outlived the longest wait: a new failure, not a streak going on
        delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
        attempt += 1
        log.info("link %s %s; reconnecting in %.2fs (attempt %d)", link.id, outcome, delay, attempt,
                 extra={"connection": self.name})
        self._stopping.wait(delay)
        return attempt

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
        link = Link(f"{self.name}.{next(_link_ids)}", ws, hello, self.settings, self.stats, self.sink)
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
                    raise SocketModeDisabled()
                raise HelloMissing(f"disconnect {parsed.reason} before hello")
        raise HelloMissing("no hello in time")

    def _serve(self, link: Link) -> LinkOutcome:
        """Run the link until it ends or must be replaced; a replaced link retires in the background."""
        self.links.append(link)
        reader = gevent.spawn(link.read_loop)
        pinger = gevent.spawn(link.keepalive)
        expiry = self._schedule_expiry_refresh(link)
        outcome = link.wait_end()
        self.stats.link_ends[outcome.value] = self.stats.link_ends.get(outcome.value, 0) + 1
        if expiry is not None:
            expiry.kill(block=False)
        if outcome in REPLACE_FIRST and not self._stopping.is_set():
            # As on a refresh, the replacement opens first: a stale link retires until it is open.
            extra = self._take_overlap(link, outcome)
            if extra is not None:
                gevent.spawn(self._retire, link, reader, pinger, True, extra or None)
                return outcome
        if outcome is LinkOutcome.STOP:
            gevent.spawn(self._retire, link, reader, pinger, False)
            return outcome
        link.close()
        reader.join(timeout=2)
        pinger.kill(block=False)
        self._forget(link)
        return outcome

    def _take_overlap(self, link: Link, outcome: LinkOutcome) -> str | None:
        """Hold what a replacement opened next to `link` needs: an overlap of this process and a slot.

        Returns the overlap slot's name ("" if the new link is to follow the old one on this slot's
        lease), or None: no overlap for a stale link, which then goes first.
        """
        give_up: Waitable
        if outcome is LinkOutcome.REFRESH:
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
        if self.gate.acquire(extra, give_up):
            return extra
        if outcome is LinkOutcome.STALE:
            self.overlap.release()
            return None
        return ""

    def _close_stale(self) -> None:
        for link in list(self.links):
            if link.ending is LinkOutcome.STALE:
                link.close()

    def _schedule_expiry_refresh(self, link: Link) -> gevent.Greenlet | None:
        life = link.hello.approximate_connection_time
        if not life:
            return None
        lead = min(self.settings.refresh_lead, life / 2)
        return gevent.spawn_later(max(1.0, life - lead), link.end, LinkOutcome.REFRESH)

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
            if overlap_slot:
                self.gate.release(overlap_slot)

    def _forget(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)
        self.stats.connected = any(not link.closed.is_set() for link in self.links)




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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return exc.error
    return type(exc).__name__


def refresh_overlaps(settings: Settings) -> int:
    """How many extra links this process may hold while its connections refresh.

    Slack's 10 per app, less P x K steady links, shared by the P processes; at least one,
    which `run` guarantees by refusing P x K + P > 10. Not capped at K: when Slack warns a
    replacement link while its predecessor is still closing, a connection briefly needs two.
    """
    spare = SLACK_MAX_CONNECTIONS - settings.processes * settings.connections
    return max(1, spare // settings.processes)
