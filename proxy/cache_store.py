"""Where cached answers live: Redis when configured, else a bounded in-process LRU.

Both stores speak one small protocol: ``get`` / ``put`` an entry with a TTL, and
``claim`` / ``release`` / ``wait`` for single flight (the first caller of a missing
key claims it and asks upstream; the others wait until it stored its answer or
gave up). A claim expires by itself, so a crashed leader blocks nobody for longer
than the hold it asked for.

Failures of the store raise ``CacheUnavailable``; the cache treats them as misses.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from redis import Redis, RedisError

ENTRY_PREFIX = "metergate:cache:entry:"
CLAIM_PREFIX = "metergate:cache:claim:"
FIRST_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.05

# Delete the claim only if it is still ours (it may have expired and been re-taken).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class CacheUnavailable(Exception):
    """The cache store could not be read or written (Redis down, timed out, …)."""


class CacheStore(Protocol):
    def get(self, key: str) -> bytes | None:
        """The stored entry, or None when absent or expired."""
        ...

    def put(self, key: str, value: bytes, ttl_seconds: int) -> None: ...

    def claim(self, key: str, hold_seconds: float) -> str | None:
        """Become the one caller answering ``key``: a token, or None if another holds it."""
        ...

    def release(self, key: str, token: str) -> None:
        """End the claim ``token`` holds (a no-op once it expired or was re-taken)."""
        ...

    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        """Wait until ``key`` is stored or its claim ends; the entry, or None."""
        ...


class RedisCacheStore:
    """Entries as plain keys with PX expiry; claims as ``SET NX PX`` keys; waiting by polling."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._release = redis.register_script(_RELEASE_SCRIPT)

    def get(self, key: str) -> bytes | None:
        try:
            value = self._redis.get(ENTRY_PREFIX + key)
        except RedisError as exc:
            raise CacheUnavailable(f"get failed: {type(exc).__name__}") from exc
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        try:
            self._redis.set(ENTRY_PREFIX + key, value, px=ttl_seconds * 1000)
        except RedisError as exc:
            raise CacheUnavailable(f"put failed: {type(exc).__name__}") from exc

    def claim(self, key: str, hold_seconds: float) -> str | None:
        token = secrets.token_hex(8)
        hold_ms = max(1, int(hold_seconds * 1000))
        try:
            is_claimed = self._redis.set(CLAIM_PREFIX + key, token, nx=True, px=hold_ms)
        except RedisError as exc:
            raise CacheUnavailable(f"claim failed: {type(exc).__name__}") from exc
        return token if is_claimed else None

    def release(self, key: str, token: str) -> None:
        try:
            self._release(keys=[CLAIM_PREFIX + key], args=[token])
        except RedisError as exc:
            raise CacheUnavailable(f"release failed: {type(exc).__name__}") from exc

    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        deadline = time.monotonic() + timeout_seconds
        pause = FIRST_POLL_SECONDS
        while True:
            try:
                # One transaction: the leader stores before it releases, so "no claim and
                # no entry" in one snapshot means it gave up.
                pipe = self._redis.pipeline(transaction=True)
                pipe.get(ENTRY_PREFIX + key)
                pipe.exists(CLAIM_PREFIX + key)
                value, is_claimed = pipe.execute()
            except RedisError as exc:
                raise CacheUnavailable(f"wait failed: {type(exc).__name__}") from exc
            if isinstance(value, bytes):
                return value
            remaining = deadline - time.monotonic()
            if not is_claimed or remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_POLL_SECONDS)


@dataclass(slots=True)
class _Flight:
    token: str
    expires_at: float
    done: threading.Event = field(default_factory=threading.Event)


class MemoryCacheStore:
    """A thread-safe LRU bounded by the total size of its entries, each with its own TTL.

    For the embedded mode (one process): entries are lost on restart and not shared
    between processes. Waiters block on a ``threading.Event`` per claimed key.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0
        self._flights: dict[str, _Flight] = {}

    @property
    def size_bytes(self) -> int:
        return self._size

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                return None
            expires_at, value = item
            if expires_at <= self._clock():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if len(value) > self._max_bytes or ttl_seconds <= 0:
            return
        with self._lock:
            self._drop(key)
            self._entries[key] = (self._clock() + ttl_seconds, value)
            self._size += len(value)
            while self._size > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def claim(self, key: str, hold_seconds: float) -> str | None:
        now = self._clock()
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None and flight.expires_at > now:
                return None
            if flight is not None:
                flight.done.set()  # an expired claim: let its waiters go
            token = secrets.token_hex(8)
            self._flights[key] = _Flight(token, now + hold_seconds)
            return token

    def release(self, key: str, token: str) -> None:
        with self._lock:
            flight = self._flights.get(key)
            if flight is None or flight.token != token:
                return
            del self._flights[key]
        flight.done.set()

    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None:
            hold = max(0.0, flight.expires_at - self._clock())
            flight.done.wait(min(timeout_seconds, hold))
        return self.get(key)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._size -= len(item[1])
