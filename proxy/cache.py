"""Stage: the response cache. Exact match, per tenant, single flight.

A call's key is the SHA-256 of canonical JSON holding the tenant, the endpoint,
the upstream model, the ``anthropic-beta`` header and the whole request body minus
the fields that do not change the answer (``IGNORED_FIELDS``: ``stream`` and
``stream_options`` among them, so a streamed and a whole-answer request share
an entry). The tenant is part of every key: no entry is ever served to another
tenant.

Policy, per call:

- the TTL is the tier's ``cache_ttl_seconds`` (None or 0: the cache is off for
  that tier); ``x-metergate-cache-ttl: SECONDS`` overrides it, capped at
  ``METERGATE_CACHE_MAX_TTL_SECONDS`` (0: look up, but store nothing);
- ``Cache-Control: no-cache`` skips the lookup but stores the fresh answer;
  ``no-store`` skips both.

Single flight: on a miss the first caller claims the key and asks upstream; the
others wait (at most ``METERGATE_CACHE_LOCK_WAIT_SECONDS``) for its answer and fall
through to their own upstream call if it fails. The cache never fails a call: a
store that cannot be reached is a miss, logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol

import orjson
from redis import Redis

from proxy.cache_store import (
    CacheStore,
    CacheUnavailable,
    Found,
    MemoryCacheStore,
    RedisCacheStore,
)
from proxy.endpoints.base import JsonObject
from proxy.errors import InvalidRequest
from proxy.script_batch import ScriptBatch
from shared.pricing import Usage
from shared.settings import Settings

log = logging.getLogger(__name__)

TTL_HEADER = "x-metergate-cache-ttl"
KEY_VERSION = 1
# Request fields that never change the answer. ``metadata.user_id`` is dropped too.
IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "safety_identifier", "prompt_cache_key"}
)
# Endpoints whose answers may be cached: each that streams needs a replayer in
# ``proxy.replay`` (embeddings never stream).
CACHEABLE_ENDPOINTS = frozenset({"chat.completions", "messages", "responses", "embeddings"})
# Answers not (yet) finished are never stored: a background response still queued, a
# failed or cancelled one (the Responses API's ``status``).
UNFINISHED_STATUSES = frozenset({"queued", "in_progress", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A stored answer: the whole body as a non-streamed call returns it, its usage and cost."""

    body: JsonObject
    usage: Usage
    cost_usd: Decimal
    model: str

    def to_bytes(self) -> bytes:
        usage = self.usage
        return orjson.dumps(
            {
                "body": self.body,
                "usage": [
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                ],
                "cost_usd": str(self.cost_usd),
                "model": self.model,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CacheEntry | None:
        """The entry, or None when ``raw`` is not one (an old format, a corrupted value)."""
        try:
            data = orjson.loads(raw)
            prompt, completion, read, write = (int(n) for n in data["usage"])
            return cls(
                body=dict(data["body"]),
                usage=Usage(prompt, completion, read, write),
                cost_usd=Decimal(data["cost_usd"]),
                model=str(data["model"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, InvalidOperation):
            return None


@dataclass(slots=True)
class CacheTicket:
    """One call's dealings with the cache: its key, the TTL to store with, its claim."""

    key: str
    ttl_seconds: int  # 0: store nothing
    is_lookup: bool
    claim_token: str | None = None
    is_settled: bool = False


def cache_key(
    tenant_id: int, endpoint: str, upstream_model: str, body: JsonObject, beta: str | None
) -> str:
    """The hex SHA-256 naming the answer to ``body`` for this tenant and endpoint."""
    fields = {name: value for name, value in body.items() if name not in IGNORED_FIELDS}
    metadata = fields.get("metadata")
    if isinstance(metadata, dict) and "user_id" in metadata:
        rest = {name: value for name, value in metadata.items() if name != "user_id"}
        if rest:
            fields["metadata"] = rest
        else:
            del fields["metadata"]
    material = {
        "v": KEY_VERSION,
        "tenant": tenant_id,
        "endpoint": endpoint,
        "upstream_model": upstream_model,
        "anthropic_beta": beta,
        "body": fields,
    }
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def is_finished(answer: JsonObject) -> bool:
    """False for an answer the provider has not finished, or finished with a failure."""
    status = answer.get("status")
    return not (isinstance(status, str) and status in UNFINISHED_STATUSES)


def cache_directives(headers: dict[str, str]) -> frozenset[str]:
    """The ``Cache-Control`` directives of a request, lower-cased."""
    value = headers.get("cache-control", "")
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def requested_ttl(headers: dict[str, str], tier_ttl: int, max_ttl: int) -> int:
    """The TTL for this call: the header's (capped at ``max_ttl``), else the tier's.

    Raises InvalidRequest when the header is not a whole number of seconds.
    """
    raw = headers.get(TTL_HEADER)
    if raw is None:
        return min(tier_ttl, max_ttl)
    try:
        seconds = int(raw.strip())
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise InvalidRequest(
            f"{TTL_HEADER} must be a whole number of seconds (got {raw[:40]!r}).",
            code="invalid_cache_ttl",
            param=TTL_HEADER,
        )
    return min(seconds, max_ttl)


class ResponseCache:
    """The cache stage: plan a call's ticket, look it up, then settle it once."""

    def __init__(
        self, store: CacheStore, *, max_ttl_seconds: int, lock_wait_seconds: float
    ) -> None:
        self._store = store
        self._max_ttl = max_ttl_seconds
        self._lock_wait = lock_wait_seconds

    def plan(
        self,
        *,
        tenant_id: int,
        tier_ttl_seconds: int | None,
        endpoint: str,
        upstream_model: str,
        body: JsonObject,
        headers: dict[str, str],
    ) -> CacheTicket | None:
        """The call's ticket, or None when the cache plays no part in it."""
        if not tier_ttl_seconds or endpoint not in CACHEABLE_ENDPOINTS:
            return None
        directives = cache_directives(headers)
        if "no-store" in directives:
            return None
        ttl = requested_ttl(headers, tier_ttl_seconds, self._max_ttl)
        key = cache_key(tenant_id, endpoint, upstream_model, body, headers.get("anthropic-beta"))
        return CacheTicket(key=key, ttl_seconds=ttl, is_lookup="no-cache" not in directives)

    def lookup(self, ticket: CacheTicket) -> CacheEntry | None:
        """The stored answer, or None: then this call asks upstream and settles the ticket.

        On a miss the call claims the key (in the same store round trip as the read), or
        waits (bounded) for the call that did.
        """
        return self.begin_lookup(ticket, None)()

    def begin_lookup(self, ticket: CacheTicket, batch: ScriptBatch | None) -> Lookup:
        """``lookup`` in two steps: its store round trip queued in ``batch`` (on Redis),
        then the returned function, called once the batch ran, gives what it found.
        Without a batch the function does the whole lookup when called.

        Called with ``may_wait=False`` (a call refused after its lookup was sent), it
        only takes note of the claim the call got, for ``settle`` to end, and waits for
        no other call's answer."""
        if not ticket.is_lookup:
            return _nothing
        hold = self._lock_wait if ticket.ttl_seconds > 0 else None
        if batch is not None and isinstance(self._store, RedisCacheStore):
            queued = self._store.queue_get_or_claim(ticket.key, hold, batch)
            return lambda may_wait=True: self._finish_lookup(ticket, hold, queued, may_wait)
        return lambda may_wait=True: self._finish_lookup(
            ticket, hold, lambda: self._store.get_or_claim(ticket.key, hold), may_wait
        )

    def _finish_lookup(
        self,
        ticket: CacheTicket,
        hold: float | None,
        get: Callable[[], Found],
        may_wait: bool = True,
    ) -> CacheEntry | None:
        try:
            found = get()
            if found.value is not None:
                return self._entry(ticket.key, found.value)
            if hold is None:
                return None
            if found.token is None:
                if not may_wait:
                    return None
                raw = self._store.wait(ticket.key, self._lock_wait)
                return CacheEntry.from_bytes(raw) if raw is not None else None
            ticket.claim_token = found.token
            return None
        except CacheUnavailable as exc:
            log.warning("event=cache_unavailable op=lookup error=%s", exc)
            return None

    def settle(
        self, ticket: CacheTicket, entry: CacheEntry | None, batch: ScriptBatch | None = None
    ) -> None:
        """Store ``entry`` (a complete, successful answer) if the ticket allows, and end
        the call's claim so waiters go on: one store round trip (queued in ``batch`` when
        given). Once per ticket; never raises (a claim that could not be ended expires by
        itself)."""
        if ticket.is_settled:
            return
        ticket.is_settled = True
        token, ticket.claim_token = ticket.claim_token, None
        value = None
        if entry is not None and ticket.ttl_seconds > 0 and is_finished(entry.body):
            value = entry.to_bytes()
        try:
            self._store.put_and_release(ticket.key, value, ticket.ttl_seconds, token, batch)
        except CacheUnavailable as exc:
            log.warning("event=cache_unavailable op=store error=%s", exc)

    def _entry(self, key: str, raw: bytes) -> CacheEntry | None:
        entry = CacheEntry.from_bytes(raw)
        if entry is None:
            log.warning("event=cache_entry_unreadable key=%s", key[:16])
        return entry


def _nothing(may_wait: bool = True) -> CacheEntry | None:
    return None


class Lookup(Protocol):
    """What ``ResponseCache.begin_lookup`` returns: call it once the batch ran."""

    def __call__(self, may_wait: bool = True) -> CacheEntry | None: ...


def build_response_cache(settings: Settings, redis: Redis | None) -> ResponseCache:
    """The cache on Redis when the app has one, else in process (embedded mode)."""
    store: CacheStore = (
        RedisCacheStore(redis)
        if redis is not None
        else MemoryCacheStore(settings.cache_memory_max_bytes)
    )
    return ResponseCache(
        store,
        max_ttl_seconds=settings.cache_max_ttl_seconds,
        lock_wait_seconds=settings.cache_lock_wait_seconds,
    )
