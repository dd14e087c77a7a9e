"""Stage: tenant isolation of stored answers (the Responses API's ``resp_…`` ids).

The provider stores answers under the gateway's own provider key, so any caller who
knows an id could read, delete or continue another tenant's conversation. The gateway
therefore remembers which tenant each id it handed out belongs to, and answers every
other tenant 404, as if the id did not exist.

Where it remembers: Redis (``metergate:response-owner:<id>`` = tenant id, with
``METERGATE_RESPONSE_OWNER_TTL_SECONDS`` expiry) when the app has Redis, else a bounded
in-process map (embedded mode: one process). The id is remembered before the answer
carrying it leaves, so the client can never use it before the gateway knows it. When
the map misses (expired, evicted, another process in embedded mode), the request log
decides: ``request_records.response_id`` with the tenant's id. A store that fails is
skipped (logged); a database that fails too refuses the call with 503, never guesses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Protocol

from redis import Redis, RedisError
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from proxy.errors import GatewayError, NotFound
from proxy.script_batch import ScriptBatch
from shared.models import RequestRecord

log = logging.getLogger(__name__)

KEY_PREFIX = "metergate:response-owner:"
MEMORY_MAX_ENTRIES = 100_000


class OwnerStoreUnavailable(Exception):
    """The owner store could not be read or written."""


class OwnerStore(Protocol):
    def put(self, response_id: str, tenant_id: int, ttl_seconds: int) -> None: ...

    def get(self, response_id: str) -> int | None:
        """The owning tenant, or None when unknown here."""
        ...


# KEYS: the id's key. ARGV: tenant id, ttl seconds. A SET that can join a ScriptBatch.
_PUT = "return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"


class RedisOwnerStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._put = redis.register_script(_PUT)

    def queue_put(
        self, response_id: str, tenant_id: int, ttl_seconds: int, batch: ScriptBatch
    ) -> None:
        """``put``, queued in ``batch`` (the call's settle round trip); a failure is logged."""

        def then(result: object) -> None:
            if isinstance(result, Exception):
                log.warning(
                    "event=response_owner_unavailable op=put error=%s", type(result).__name__
                )

        batch.add(self._put, [KEY_PREFIX + response_id], [tenant_id, ttl_seconds], then)

    def put(self, response_id: str, tenant_id: int, ttl_seconds: int) -> None:
        try:
            self._redis.set(KEY_PREFIX + response_id, tenant_id, ex=ttl_seconds)
        except RedisError as exc:
            raise OwnerStoreUnavailable(f"set failed: {type(exc).__name__}") from exc

    def get(self, response_id: str) -> int | None:
        try:
            value = self._redis.get(KEY_PREFIX + response_id)
        except RedisError as exc:
            raise OwnerStoreUnavailable(f"get failed: {type(exc).__name__}") from exc
        return int(value) if isinstance(value, bytes) and value.isdigit() else None


class MemoryOwnerStore:
    """A thread-safe map with expiry, least recently used dropped past ``max_entries``."""

    def __init__(self, max_entries: int = MEMORY_MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._owners: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def put(self, response_id: str, tenant_id: int, ttl_seconds: int) -> None:
        with self._lock:
            self._owners[response_id] = (tenant_id, time.monotonic() + ttl_seconds)
            self._owners.move_to_end(response_id)
            while len(self._owners) > self._max_entries:
                self._owners.popitem(last=False)

    def get(self, response_id: str) -> int | None:
        with self._lock:
            found = self._owners.get(response_id)
            if found is None:
                return None
            if found[1] <= time.monotonic():
                del self._owners[response_id]
                return None
            self._owners.move_to_end(response_id)
            return found[0]


class ResponseOwners:
    """Remember and check which tenant owns a response id."""

    def __init__(self, store: OwnerStore, engine: Engine, *, ttl_seconds: int) -> None:
        self._store = store
        self._engine = engine
        self._ttl = ttl_seconds

    def remember(self, response_id: str, tenant_id: int, batch: ScriptBatch | None = None) -> None:
        """Note that ``tenant_id`` owns ``response_id``. Never raises: the request log
        (``response_id`` on the call's record) covers a store that failed. With a
        ``batch`` (on Redis) the write goes in it, to be sent with the call's settle
        scripts, before the answer leaves."""
        if batch is not None and isinstance(self._store, RedisOwnerStore):
            self._store.queue_put(response_id, tenant_id, self._ttl, batch)
            return
        try:
            self._store.put(response_id, tenant_id, self._ttl)
        except OwnerStoreUnavailable as exc:
            log.warning("event=response_owner_unavailable op=put error=%s", exc)

    def require(self, response_id: str, tenant_id: int, *, param: str | None = None) -> None:
        """Pass when ``tenant_id`` owns ``response_id``; else NotFound (404) worded as the
        provider words an unknown id. GatewayError (503) when ownership cannot be checked.
        """
        if self.is_owner(response_id, tenant_id):
            return
        if param == "previous_response_id":
            raise NotFound(
                f"Previous response with id '{response_id}' not found.",
                code="previous_response_not_found",
                param=param,
            )
        raise NotFound(f"Response with id '{response_id}' not found.", code="not_found")

    def is_owner(self, response_id: str, tenant_id: int) -> bool:
        try:
            owner = self._store.get(response_id)
        except OwnerStoreUnavailable as exc:
            log.warning("event=response_owner_unavailable op=get error=%s", exc)
            owner = None
        if owner is not None:
            return owner == tenant_id
        if not self._is_recorded_owner(response_id, tenant_id):
            return False
        self.remember(response_id, tenant_id)
        return True

    def _is_recorded_owner(self, response_id: str, tenant_id: int) -> bool:
        query = (
            select(RequestRecord.id)
            .where(RequestRecord.response_id == response_id)
            .where(RequestRecord.tenant_id == tenant_id)
            .limit(1)
        )
        try:
            with self._engine.connect() as connection:
                return connection.scalar(query) is not None
        except SQLAlchemyError as exc:
            log.warning("event=response_owner_lookup_failed error=%s", type(exc).__name__)
            raise GatewayError(
                "The gateway cannot check who owns this response right now; try again shortly.",
                status=503,
                code="ownership_unavailable",
            ) from exc


def build_response_owners(engine: Engine, redis: Redis | None, ttl_seconds: int) -> ResponseOwners:
    store: OwnerStore = RedisOwnerStore(redis) if redis is not None else MemoryOwnerStore()
    return ResponseOwners(store, engine, ttl_seconds=ttl_seconds)
