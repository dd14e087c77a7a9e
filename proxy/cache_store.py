"""Where cached answers live: Redis (shared by every process) or in process (embedded).

Both stores keep one contract, two steps of one Redis round trip each on the hot
path: ``get_or_claim`` (the entry; else, atomically, the single-flight claim on the
missing key) and ``put_and_release`` (store the answer, end the claim), plus ``wait``
for the callers that found another one's claim (until it stored its answer or gave
up). A claim expires by itself, so a crashed leader blocks nobody for longer than the
hold it asked for.

Failures of the store raise ``CacheUnavailable``; the cache treats them as misses.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis, RedisError

from proxy.script_batch import ScriptBatch

log = logging.getLogger(__name__)

ENTRY_PREFIX = "metergate:cache:entry:"
CLAIM_PREFIX = "metergate:cache:claim:"


def entry_key(key: str) -> str:
    """The Redis key of an answer. ``{key}`` is a hash tag: an answer and its claim share
    one Redis Cluster slot, so the scripts that touch both run on Cluster too."""
    return f"{ENTRY_PREFIX}{{{key}}}"


def claim_key(key: str) -> str:
    """The Redis key of the single-flight claim on an answer (same slot as the answer)."""
    return f"{CLAIM_PREFIX}{{{key}}}"


def _found(result: Any, token: str) -> Found:
    if result[0] == 1:
        return Found(value=bytes(result[1]))
    return Found(token=token if result[0] == 2 else None)


def _log_store_failure(result: Any) -> None:
    """A batched store that failed: the claim expires by itself; the answer is not kept."""
    if isinstance(result, Exception):
        log.warning("event=cache_unavailable op=store error=put failed: %s", type(result).__name__)


FIRST_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.05

# Delete the claim only if it is still ours (it may have expired and been re-taken).
# KEYS: entry, claim. ARGV: token, hold ms (0: only read). The entry, atomically with the
# claim on a miss, so no leader can store and release between the two.
# Returns {1, entry}, {2} claimed, {3} another caller holds the claim, {0} a plain miss.
_GET_OR_CLAIM_SCRIPT = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if tonumber(ARGV[2]) <= 0 then return {0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"""

# KEYS: entry, claim. ARGV: value ('' : store nothing), ttl ms, token ('': no claim).
_PUT_AND_RELEASE_SCRIPT = """
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Found:
    """What ``get_or_claim`` found: the entry, or this caller's claim on the miss.

    Neither, after a claim was asked for: another caller is answering (``wait``).
    """

    value: bytes | None = None
    token: str | None = None


class CacheUnavailable(Exception):
    """The cache store could not be read or written (Redis down, timed out, …)."""


class CacheStore(Protocol):
    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        """Wait until ``key`` is stored or its claim ends; the entry, or None."""
        ...

    def get_or_claim(self, key: str, hold_seconds: float | None) -> Found:
        """The entry; else, when ``hold_seconds`` is given, the claim on it (atomically):
        a token, or neither when another caller holds it."""
        ...

    def put_and_release(
        self,
        key: str,
        value: bytes | None,
        ttl_seconds: int,
        token: str | None,
        batch: ScriptBatch | None = None,
    ) -> None:
        """Store ``value`` (if any) and end the claim ``token`` (if any), in one step;
        ending a claim that expired or was re-taken is a no-op. Raises CacheUnavailable;
        with a ``batch`` (Redis) the step goes in it instead, and a failure is logged
        when the batch runs."""
        ...


class RedisCacheStore:
    """Entries as plain keys with PX expiry; claims as ``SET NX PX`` keys; waiting by polling."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._get_or_claim = redis.register_script(_GET_OR_CLAIM_SCRIPT)
        self._put_and_release = redis.register_script(_PUT_AND_RELEASE_SCRIPT)

    def get_or_claim(self, key: str, hold_seconds: float | None) -> Found:
        token, keys, args = self._get_or_claim_call(key, hold_seconds)
        try:
            result = self._get_or_claim(keys=keys, args=args)
        except RedisError as exc:
            raise CacheUnavailable(f"get failed: {type(exc).__name__}") from exc
        return _found(result, token)

    def queue_get_or_claim(
        self, key: str, hold_seconds: float | None, batch: ScriptBatch
    ) -> Callable[[], Found]:
        """``get_or_claim`` queued in ``batch``: once the batch ran, the returned function
        gives what it found (or raises CacheUnavailable)."""
        token, keys, args = self._get_or_claim_call(key, hold_seconds)
        result = batch.later(self._get_or_claim, keys, args)

        def found() -> Found:
            try:
                return _found(result(), token)
            except RedisError as exc:
                raise CacheUnavailable(f"get failed: {type(exc).__name__}") from exc

        return found

    @staticmethod
    def _get_or_claim_call(
        key: str, hold_seconds: float | None
    ) -> tuple[str, list[str], list[str | int]]:
        token = secrets.token_hex(8)
        hold_ms = 0 if hold_seconds is None else max(1, int(hold_seconds * 1000))
        return token, [entry_key(key), claim_key(key)], [token, hold_ms]

    def put_and_release(
        self,
        key: str,
        value: bytes | None,
        ttl_seconds: int,
        token: str | None,
        batch: ScriptBatch | None = None,
    ) -> None:
        stored = value if value is not None and ttl_seconds > 0 else b""
        if not stored and token is None:
            return
        keys = [entry_key(key), claim_key(key)]
        args: list[bytes | int | str] = [stored, max(1, ttl_seconds * 1000), token or ""]
        if batch is not None:
            batch.add(self._put_and_release, keys, args, _log_store_failure)
            return
        try:
            self._put_and_release(keys=keys, args=args)
        except RedisError as exc:
            raise CacheUnavailable(f"put failed: {type(exc).__name__}") from exc

    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        deadline = time.monotonic() + timeout_seconds
        pause = FIRST_POLL_SECONDS
        while True:
            try:
                # One transaction: the leader stores before it releases, so "no claim and
                # no entry" in one snapshot means it gave up.
                pipe = self._redis.pipeline(transaction=True)
                pipe.get(entry_key(key))
                pipe.exists(claim_key(key))
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

    def _get(self, key: str) -> bytes | None:
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

    def _put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if len(value) > self._max_bytes or ttl_seconds <= 0:
            return
        with self._lock:
            self._drop(key)
            self._entries[key] = (self._clock() + ttl_seconds, value)
            self._size += len(value)
            while self._size > self._max_bytes:
                self._drop(next(iter(self._entries)))

    def _claim(self, key: str, hold_seconds: float) -> str | None:
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

    def _release(self, key: str, token: str) -> None:
        with self._lock:
            flight = self._flights.get(key)
            if flight is None or flight.token != token:
                return
            del self._flights[key]
        flight.done.set()

    def get_or_claim(self, key: str, hold_seconds: float | None) -> Found:
        value = self._get(key)
        if value is not None or hold_seconds is None:
            return Found(value=value)
        token = self._claim(key, hold_seconds)
        if token is None:
            return Found()
        # The leader before us may have stored and released between our get and claim.
        value = self._get(key)
        if value is not None:
            self._release(key, token)
            return Found(value=value)
        return Found(token=token)

    def put_and_release(
        self,
        key: str,
        value: bytes | None,
        ttl_seconds: int,
        token: str | None,
        batch: ScriptBatch | None = None,  # in process: nothing to send
    ) -> None:
        if value is not None:
            self._put(key, value, ttl_seconds)
        if token is not None:
            self._release(key, token)

    def wait(self, key: str, timeout_seconds: float) -> bytes | None:
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None:
            hold = max(0.0, flight.expires_at - self._clock())
            flight.done.wait(min(timeout_seconds, hold))
        return self._get(key)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._size -= len(item[1])
