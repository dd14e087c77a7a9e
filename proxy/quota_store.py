"""Monthly quota counters: reserve, settle and rebuild, atomically, in Redis or in process.

Layout in Redis (``{month}`` is a hash tag: a month's keys share one cluster slot):

    mg:quota:{2026-11}:built            marker: the month's counters were loaded from SQL
    mg:quota:{2026-11}:rebuild-lock     one process rebuilds at a time
    mg:quota:{2026-11}:<scope>          HASH  tokens, usd        spent (settled) this month
                                              held_tokens, held_usd   reserved by calls in flight
                                              r:<reservation id>  "<tokens>:<usd>" held by it
    mg:quota:{2026-11}:<scope>:holds    ZSET  reservation id -> deadline (ms)

Scopes: ``user:<id>``, ``key:<id>``, ``enduser:<key id>:<end user>``, ``tenant:<id>``,
``global``. Money is integer units of 1e-8 USD (the SQL ledger's precision), never
floats. One Lua script reserves for every scope of a call in one round trip: it drops
expired holds, checks spent + held + this call against each limit, and holds all or
nothing. Another settles: removes the hold and adds the actual usage. A hold whose
deadline passed (crashed or abandoned call) is dropped by the next script that touches
its scope. Keys expire a week after their month ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from redis import Redis

from proxy.script_batch import ScriptBatch

PREFIX = "mg:quota"

RESERVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local now = tonumber(ARGV[1])
local scopes = (#KEYS - 1) / 2
local function drop_expired(counters, holds)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  for _, id in ipairs(expired) do
    local held = redis.call('HGET', counters, 'r:' .. id)
    if held then
      local tokens, usd = string.match(held, '^(%d+):(%d+)$')
      redis.call('HINCRBY', counters, 'held_tokens', '-' .. tokens)
      redis.call('HINCRBY', counters, 'held_usd', '-' .. usd)
      redis.call('HDEL', counters, 'r:' .. id)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
end
for i = 1, scopes do
  local counters, holds = KEYS[2 * i], KEYS[2 * i + 1]
  drop_expired(counters, holds)
  local arg = 4 * i
  local token_limit, usd_limit = tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  local tokens, usd = tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4])
  local c = redis.call('HMGET', counters, 'tokens', 'held_tokens', 'usd', 'held_usd')
  local spent_t, held_t = tonumber(c[1] or 0), tonumber(c[2] or 0)
  local spent_u, held_u = tonumber(c[3] or 0), tonumber(c[4] or 0)
  if token_limit >= 0 and spent_t + held_t + tokens > token_limit then
    return {i, 1, spent_t, held_t}
  end
  if usd_limit >= 0 and spent_u + held_u + usd > usd_limit then
    return {i, 2, spent_u, held_u}
  end
end
for i = 1, scopes do
  local counters, holds = KEYS[2 * i], KEYS[2 * i + 1]
  local arg = 4 * i
  redis.call('HINCRBY', counters, 'held_tokens', ARGV[arg + 3])
  redis.call('HINCRBY', counters, 'held_usd', ARGV[arg + 4])
  redis.call('HSET', counters, 'r:' .. ARGV[3], ARGV[arg + 3] .. ':' .. ARGV[arg + 4])
  redis.call('ZADD', holds, ARGV[2], ARGV[3])
  redis.call('EXPIREAT', counters, ARGV[4])
  redis.call('EXPIREAT', holds, ARGV[4])
end
return {0}
"""
# KEYS[1] marker, then per scope: counters, holds.
# ARGV: now ms, deadline ms, reservation id, expire-at (unix s), then per scope:
#       token limit, usd limit (-1: none), tokens, usd to hold.
# Returns {0} held, {-1} counters missing, or {scope number, 1 tokens | 2 usd, spent, held}.

SETTLE_LUA = """
for i = 1, #KEYS / 2 do
  local counters, holds = KEYS[2 * i - 1], KEYS[2 * i]
  local held = redis.call('HGET', counters, 'r:' .. ARGV[1])
  if held then
    local tokens, usd = string.match(held, '^(%d+):(%d+)$')
    redis.call('HINCRBY', counters, 'held_tokens', '-' .. tokens)
    redis.call('HINCRBY', counters, 'held_usd', '-' .. usd)
    redis.call('HDEL', counters, 'r:' .. ARGV[1])
  end
  redis.call('ZREM', holds, ARGV[1])
  redis.call('HINCRBY', counters, 'tokens', ARGV[2])
  redis.call('HINCRBY', counters, 'usd', ARGV[3])
  redis.call('EXPIREAT', counters, ARGV[4])
end
return 0
"""
# KEYS per scope: counters, holds. ARGV: reservation id, tokens, usd, expire-at (unix s).

log = logging.getLogger(__name__)


class CountersMissing(Exception):
    """The month's counters are not loaded (Redis restarted, or a new month): rebuild first."""


@dataclass(frozen=True, slots=True)
class Hold:
    """One scope's part of a reservation, and that scope's limits (None: unlimited)."""

    scope: str
    tokens: int
    usd: int
    token_limit: int | None = None
    usd_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation was refused: the first scope whose limit it would pass."""

    index: int  # into the holds asked for
    measure: Literal["tokens", "usd"]
    spent: int
    held: int


@dataclass(frozen=True, slots=True)
class Counters:
    tokens: int = 0
    usd: int = 0
    held_tokens: int = 0
    held_usd: int = 0


class QuotaStore(Protocol):
    """Where the counters live. ``now`` and deadlines are unix seconds."""

    def reserve(
        self,
        month: str,
        reservation_id: str,
        holds: Sequence[Hold],
        deadline: float,
        now: float,
        expire_at: int,
    ) -> Shortfall | None:
        """Hold every scope's part, or none; raises CountersMissing before a rebuild."""
        ...

    def settle(
        self,
        month: str,
        reservation_id: str,
        scopes: Sequence[str],
        tokens: int,
        usd: int,
        expire_at: int,
        batch: ScriptBatch | None = None,
    ) -> None:
        """Drop the reservation's holds (if still there) and add the actual usage.

        Raises RedisError; with a ``batch`` (Redis) the settle goes in it instead, and
        a failure is logged when the batch runs."""
        ...

    def replace(self, month: str, spent: Mapping[str, tuple[int, int]], expire_at: int) -> None:
        """Set every scope's spent (tokens, usd) to ``spent`` (others to 0); mark built."""
        ...

    def is_built(self, month: str) -> bool: ...

    def try_lock(self, month: str, seconds: float) -> bool: ...

    def unlock(self, month: str) -> None: ...

    def counters(self, month: str, scope: str) -> Counters: ...


def _shortfall(result: Any, month: str) -> Shortfall | None:
    if result[0] == -1:
        raise CountersMissing(month)
    if result[0] == 0:
        return None
    measure: Literal["tokens", "usd"] = "tokens" if result[1] == 1 else "usd"
    return Shortfall(int(result[0]) - 1, measure, int(result[2]), int(result[3]))


def log_settle_failure(reservation_id: str, error: Exception) -> None:
    """The hold expires by itself; the SQL ledger keeps the cost."""
    log.warning(
        "event=quota_settle_failed reservation=%s error=%s", reservation_id, type(error).__name__
    )


def counters_key(month: str, scope: str) -> str:
    return f"{PREFIX}:{{{month}}}:{scope}"


def _int(value: bytes | str | None) -> int:
    return int(value) if value is not None else 0


class RedisQuotaStore:
    """Counters shared by every proxy process on one Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(RESERVE_LUA)
        self._settle = redis.register_script(SETTLE_LUA)

    def reserve(
        self,
        month: str,
        reservation_id: str,
        holds: Sequence[Hold],
        deadline: float,
        now: float,
        expire_at: int,
    ) -> Shortfall | None:
        keys, args = self._reserve_call(month, reservation_id, holds, deadline, now, expire_at)
        return _shortfall(self._reserve(keys=keys, args=args), month)

    def queue_reserve(
        self,
        month: str,
        reservation_id: str,
        holds: Sequence[Hold],
        deadline: float,
        now: float,
        expire_at: int,
        batch: ScriptBatch,
    ) -> Callable[[], Shortfall | None]:
        """``reserve`` queued in ``batch``: once the batch ran, the returned function gives
        its outcome (or raises what ``reserve`` would)."""
        keys, args = self._reserve_call(month, reservation_id, holds, deadline, now, expire_at)
        result = batch.later(self._reserve, keys, args)
        return lambda: _shortfall(result(), month)

    @staticmethod
    def _reserve_call(
        month: str,
        reservation_id: str,
        holds: Sequence[Hold],
        deadline: float,
        now: float,
        expire_at: int,
    ) -> tuple[list[str], list[str | int]]:
        keys = [f"{PREFIX}:{{{month}}}:built"]
        args: list[str | int] = [int(now * 1000), int(deadline * 1000), reservation_id, expire_at]
        for hold in holds:
            keys += [counters_key(month, hold.scope), counters_key(month, hold.scope) + ":holds"]
            args += [
                -1 if hold.token_limit is None else hold.token_limit,
                -1 if hold.usd_limit is None else hold.usd_limit,
                hold.tokens,
                hold.usd,
            ]
        return keys, args

    def settle(
        self,
        month: str,
        reservation_id: str,
        scopes: Sequence[str],
        tokens: int,
        usd: int,
        expire_at: int,
        batch: ScriptBatch | None = None,
    ) -> None:
        keys: list[str] = []
        for scope in scopes:
            keys += [counters_key(month, scope), counters_key(month, scope) + ":holds"]
        args: list[str | int] = [reservation_id, tokens, usd, expire_at]
        if batch is None:
            self._settle(keys=keys, args=args)
            return

        def then(result: Any) -> None:
            if isinstance(result, Exception):
                log_settle_failure(reservation_id, result)

        batch.add(self._settle, keys, args, then)

    def replace(self, month: str, spent: Mapping[str, tuple[int, int]], expire_at: int) -> None:
        prefix = counters_key(month, "")
        stale = {
            key.decode()
            for key in self._redis.scan_iter(
                match=prefix.replace("{", "\\{").replace("}", "\\}") + "*"
            )
            if not key.endswith((b":holds", b":built", b":rebuild-lock"))
        }
        with self._redis.pipeline(transaction=True) as pipe:
            for key in stale - {counters_key(month, scope) for scope in spent}:
                pipe.hset(key, mapping={"tokens": 0, "usd": 0})
            for scope, (tokens, usd) in spent.items():
                pipe.hset(counters_key(month, scope), mapping={"tokens": tokens, "usd": usd})
                pipe.expireat(counters_key(month, scope), expire_at)
            pipe.set(f"{PREFIX}:{{{month}}}:built", 1, exat=expire_at)
            pipe.execute()

    def is_built(self, month: str) -> bool:
        return bool(self._redis.exists(f"{PREFIX}:{{{month}}}:built"))

    def try_lock(self, month: str, seconds: float) -> bool:
        key = f"{PREFIX}:{{{month}}}:rebuild-lock"
        return bool(self._redis.set(key, 1, nx=True, px=int(seconds * 1000)))

    def unlock(self, month: str) -> None:
        self._redis.delete(f"{PREFIX}:{{{month}}}:rebuild-lock")

    def counters(self, month: str, scope: str) -> Counters:
        values = self._redis.hmget(
            counters_key(month, scope), ["tokens", "usd", "held_tokens", "held_usd"]
        )
        return Counters(*(_int(value) for value in values))


@dataclass(slots=True)
class _Scope:
    tokens: int = 0
    usd: int = 0
    holds: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # id -> t, usd, end

    def drop_expired(self, now: float) -> None:
        for reservation_id in [r for r, hold in self.holds.items() if hold[2] <= now]:
            del self.holds[reservation_id]

    def held(self) -> tuple[int, int]:
        return sum(h[0] for h in self.holds.values()), sum(h[1] for h in self.holds.values())


class MemoryQuotaStore:
    """The embedded mode's counters: the same semantics in this process, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._months: dict[str, dict[str, _Scope]] = {}
        self._built: set[str] = set()
        self._locked: set[str] = set()

    def reserve(
        self,
        month: str,
        reservation_id: str,
        holds: Sequence[Hold],
        deadline: float,
        now: float,
        expire_at: int,
    ) -> Shortfall | None:
        with self._lock:
            if month not in self._built:
                raise CountersMissing(month)
            scopes = self._months.setdefault(month, {})
            for index, hold in enumerate(holds):
                scope = scopes.setdefault(hold.scope, _Scope())
                scope.drop_expired(now)
                held_tokens, held_usd = scope.held()
                if hold.token_limit is not None and (
                    scope.tokens + held_tokens + hold.tokens > hold.token_limit
                ):
                    return Shortfall(index, "tokens", scope.tokens, held_tokens)
                if hold.usd_limit is not None and scope.usd + held_usd + hold.usd > hold.usd_limit:
                    return Shortfall(index, "usd", scope.usd, held_usd)
            for hold in holds:
                scopes[hold.scope].holds[reservation_id] = (hold.tokens, hold.usd, deadline)
            return None

    def settle(
        self,
        month: str,
        reservation_id: str,
        scopes: Sequence[str],
        tokens: int,
        usd: int,
        expire_at: int,
        batch: ScriptBatch | None = None,  # in process: nothing to send
    ) -> None:
        with self._lock:
            counters = self._months.setdefault(month, {})
            for name in scopes:
                scope = counters.setdefault(name, _Scope())
                scope.holds.pop(reservation_id, None)
                scope.tokens += tokens
                scope.usd += usd

    def replace(self, month: str, spent: Mapping[str, tuple[int, int]], expire_at: int) -> None:
        with self._lock:
            scopes = self._months.setdefault(month, {})
            for name, scope in scopes.items():
                scope.tokens, scope.usd = spent.get(name, (0, 0))
            for name, (tokens, usd) in spent.items():
                scope = scopes.setdefault(name, _Scope())
                scope.tokens, scope.usd = tokens, usd
            self._built.add(month)
            # Months before this one and the last are of no use any more.
            for old in sorted(self._months)[:-2]:
                del self._months[old]
                self._built.discard(old)

    def is_built(self, month: str) -> bool:
        with self._lock:
            return month in self._built

    def try_lock(self, month: str, seconds: float) -> bool:
        with self._lock:
            if month in self._locked:
                return False
            self._locked.add(month)
            return True

    def unlock(self, month: str) -> None:
        with self._lock:
            self._locked.discard(month)

    def counters(self, month: str, scope: str) -> Counters:
        with self._lock:
            found = self._months.get(month, {}).get(scope)
            if found is None:
                return Counters()
            held_tokens, held_usd = found.held()
            return Counters(found.tokens, found.usd, held_tokens, held_usd)
