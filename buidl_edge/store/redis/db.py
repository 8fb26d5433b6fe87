"""The Redis store's connection: the pool, the scripts, redis-py errors as StoreError, and the
fail-fast backoff while Redis is away.

redis-py's sockets are plain `socket` objects, cooperative once gevent has patched the process,
so a worker calls this store directly: no thread pool. A failing Redis raises `StoreUnavailable`
(the dispatcher then acks on in degraded mode); after a failure, calls fail fast for a backoff
that grows to BACKOFF_CAP_S, then one call probes again, so an outage never stalls an ack on
connect timeouts. Every topic of the store (inbox, outbox, slots, admin) is a subclass of `RedisDb`.
"""
from __future__ import annotations

import functools
import json
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from buidl_edge.store.base import DEFAULT_RETENTION_S
from buidl_edge.store.errors import BadCall, StoreError, StoreUnavailable, one_line, rejected
from buidl_edge.store.redis.schema import DEFAULT_PREFIX

T = TypeVar("T")

# Redis answers in well under a millisecond; these only bound a dead or unreachable server.
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
POOL_SIZE = 8  # per process: Heroku Redis mini allows 20 clients in all
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0  # a probe every 2 s at most: degraded mode ends soon after Redis is back

# Errors that say "the server is not there (yet)", as opposed to a bug in a command.
_DOWN_HINTS = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM")


def redis_op(method: Callable[..., T]) -> Callable[..., T]:
    """Fail fast while backing off, translate redis-py errors into StoreError, note recoveries."""

    @functools.wraps(method)
    def call(self: RedisDb, *args: Any, **kwargs: Any) -> T:
        self._check_backoff()
        try:
            result = method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise self._failed(exc) from exc
        except (StoreError, BadCall):
            raise
        except Exception as exc:  # not Redis failing: this call alone (a bug, data it cannot send)
            raise rejected(f"store {self.where} {method.__name__.lstrip('_')}", exc) from exc
        self._succeeded()
        return result

    return call


class RedisDb:
    """One Redis 6.2+ (XAUTOCLAIM), shared by every worker of every dyno: the plumbing under every topic."""

    def __init__(self, url: str, lease_s: float = 30.0, retention_s: float = DEFAULT_RETENTION_S,
                 host: str | None = None, pool_size: int = POOL_SIZE,
                 socket_timeout: float = SOCKET_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        """No I/O here: a worker starts (degraded) even while Redis is down.

        `retention_s` is the TTL of dedup keys and handled inbox rows (config keeps it >= 600 s).
        """
        url, self.prefix = _split_prefix(url)
        parts = urlsplit(url)
        # Named in errors and logs; never the password.
        self.where = f"redis {parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"
        self._password = parts.password
        self.lease_s = lease_s
        self.retention_s = retention_s
        self.host = host or socket.gethostname()
        try:
            self._pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=socket_timeout, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, health_check_interval=30, decode_responses=True,
                # A lone surrogate (valid JSON from Slack, not UTF-8) travels as its surrogatepass
                # bytes and comes back as the same str: ids and keys stay one-to-one.
                encoding_errors="surrogatepass",
                # one quick retry on a fresh connection covers a socket left dead by a Redis restart
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        except ValueError as exc:
            raise StoreError(f"bad BUIDL_STORE_URL for {self.where}: {self._scrub(one_line(exc))}") from None
        self.r = redis.Redis(connection_pool=self._pool)
        self._scripts: dict[str, Script] = {}
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._closed = False
        # Envelopes this process is handling, per owner: a sweep that claims one back is not a re-run.
        self._handling: dict[str, set[str]] = {}
        # Envelopes whose `finish` failed while Redis was away: marked done when it is back
        # (their replies went out from the worker's memory, so none are queued again).
        self._unfinished: dict[str, str | None] = {}

    # ------------------------------------------------------------- plumbing

    def _k(self, name: str) -> str:
        return self.prefix + name

    def _script(self, source: str, args: Sequence[Any], keys: Sequence[str] = ()) -> Any:
        """Run a Lua script (EVALSHA, loaded on first use); it gets the prefix as ARGV[1]."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.r.register_script(source)
        return script(keys=list(keys), args=[self.prefix, *args])

    def _script_many(self, source: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """The script run once per (keys, args) call, all in one pipeline (one round trip): each
        call's result, or the RedisError it failed with alone. A server that lost its scripts (a
        restart, SCRIPT FLUSH) answers NOSCRIPT: the script is loaded again and those calls resent."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.r.register_script(source)
        results = self._pipelined(script.sha, calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, redis.exceptions.NoScriptError)]
        if missing:
            script.sha = self.r.script_load(source)
            for i, result in zip(missing, self._pipelined(script.sha, [calls[i] for i in missing])):
                results[i] = result
        return results

    def _pipelined(self, sha: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        pipe = self.r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, self.prefix, *args)
        return list(pipe.execute(raise_on_error=False))

    def _item_failed(self, exc: redis.RedisError) -> StoreError:
        """One pipelined call's error: raised as the store's failure when Redis is down, else
        that call's own StoreError."""
        error = self._failed(exc)
        if isinstance(error, StoreUnavailable):
            raise error
        return error

    def _ttl(self) -> int:
        return max(1, int(self.retention_s))

    def _check_backoff(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"store {self.where} is closed")
        if self._failures and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"store {self.where} unavailable (retrying in "
                                   f"{self._retry_at - time.monotonic():.1f}s): {self._last_error}")

    def _failed(self, exc: redis.RedisError) -> StoreError:
        detail = self._scrub(one_line(exc))
        down = isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or (
            isinstance(exc, redis.ResponseError) and str(exc).upper().startswith(_DOWN_HINTS))
        if not down:
            return StoreError(f"store {self.where}: {detail}")
        self._failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(self._failures - 1, 10)) * random.uniform(0.5, 1.0)
        self._retry_at = time.monotonic() + delay  # the worker's StoreHealth says it, once per episode
        self._last_error = detail
        return StoreUnavailable(f"store {self.where} unavailable: {detail}")

    def _succeeded(self) -> None:
        if self._failures:
            self._failures = 0
            self._last_error = ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    # ------------------------------------------------------------- lifecycle

    def describe(self) -> str:
        return self.where

    def change_token(self, others_only: bool = False) -> None:
        """Redis cannot say what changed without a round trip: callers always look."""
        return None

    def ping(self) -> bool:
        """True when Redis answers (`check` and tests)."""
        return bool(self._ping())

    @redis_op
    def _ping(self) -> Any:
        return self.r.ping()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.disconnect()


def _split_prefix(url: str) -> tuple[str, str]:
    """Take our own `prefix=` out of the URL's query; redis-py would pass it on to sockets."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def rows_json(rows: list[list[Any]]) -> str:
    """Rows for a script to cjson.decode. Not ASCII-escaped: Lua's cjson refuses a lone surrogate
    escape, but passes its bytes through."""
    return json.dumps(rows, ensure_ascii=False)
