"""Who owns a response id: the Redis and in-process maps, and the request log behind them.

Real Redis (database 13), real PostgreSQL and SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from proxy.errors import GatewayError, NotFound
from proxy.response_owners import (
    KEY_PREFIX,
    MemoryOwnerStore,
    OwnerStore,
    RedisOwnerStore,
    ResponseOwners,
)
from shared.db import make_engine, upgrade
from shared.records import CallRecord, write_records

OWNER_REDIS_URL = "redis://127.0.0.1:6379/13"
TENANT_A, TENANT_B = 101, 202


@pytest.fixture(scope="module")
def owner_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(OWNER_REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def engine(db_url: str) -> Iterator[Engine]:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> OwnerStore:
    if request.param == "redis":
        return RedisOwnerStore(request.getfixturevalue("owner_redis"))
    return MemoryOwnerStore()


def new_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def recorded(engine: Engine, response_id: str, tenant_id: int) -> None:
    now = datetime.now(UTC)
    write_records(
        engine,
        [
            CallRecord(
                id=str(uuid.uuid4()),
                created_at=now,
                finished_at=now,
                tenant_id=tenant_id,
                dialect="openai",
                endpoint="responses",
                status=200,
                latency_ms=1.0,
                response_id=response_id,
            )
        ],
    )


def test_remembered_id_belongs_to_its_tenant_only(engine: Engine, store: OwnerStore) -> None:
    owners = ResponseOwners(store, engine, ttl_seconds=60)
    response_id = new_id()
    owners.remember(response_id, TENANT_A)

    assert owners.is_owner(response_id, TENANT_A)
    assert not owners.is_owner(response_id, TENANT_B)
    owners.require(response_id, TENANT_A)
    with pytest.raises(NotFound) as caught:
        owners.require(response_id, TENANT_B)
    assert caught.value.status == 404
    assert caught.value.message == f"Response with id '{response_id}' not found."


def test_unknown_id_is_nobodys(engine: Engine, store: OwnerStore) -> None:
    owners = ResponseOwners(store, engine, ttl_seconds=60)
    with pytest.raises(NotFound) as caught:
        owners.require(new_id(), TENANT_A, param="previous_response_id")
    assert (caught.value.code, caught.value.param) == (
        "previous_response_not_found",
        "previous_response_id",
    )


def test_a_miss_is_answered_from_the_request_log_and_remembered(
    engine: Engine, store: OwnerStore
) -> None:
    owners = ResponseOwners(store, engine, ttl_seconds=60)
    response_id = new_id()
    recorded(engine, response_id, TENANT_A)

    assert not owners.is_owner(response_id, TENANT_B)
    assert store.get(response_id) is None
    assert owners.is_owner(response_id, TENANT_A)
    assert store.get(response_id) == TENANT_A


def test_redis_entries_expire_after_the_ttl(owner_redis: redis.Redis, engine: Engine) -> None:
    owners = ResponseOwners(RedisOwnerStore(owner_redis), engine, ttl_seconds=3600)
    response_id = new_id()
    owners.remember(response_id, TENANT_A)

    assert owner_redis.get(KEY_PREFIX + response_id) == str(TENANT_A).encode()
    assert 3590 < owner_redis.ttl(KEY_PREFIX + response_id) <= 3600


def test_memory_store_drops_the_least_recently_used_past_its_bound() -> None:
    store = MemoryOwnerStore(max_entries=2)
    store.put("resp_1", TENANT_A, 60)
    store.put("resp_2", TENANT_A, 60)
    assert store.get("resp_1") == TENANT_A  # now the most recently used
    store.put("resp_3", TENANT_B, 60)

    assert (store.get("resp_1"), store.get("resp_2"), store.get("resp_3")) == (
        TENANT_A,
        None,
        TENANT_B,
    )


def test_unreachable_redis_falls_back_to_the_request_log(engine: Engine) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    owners = ResponseOwners(RedisOwnerStore(dead), engine, ttl_seconds=60)
    response_id = new_id()
    owners.remember(response_id, TENANT_A)  # logged, not raised
    recorded(engine, response_id, TENANT_A)

    assert owners.is_owner(response_id, TENANT_A)
    assert not owners.is_owner(response_id, TENANT_B)


def test_unknown_ownership_with_the_database_down_is_a_503() -> None:
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    owners = ResponseOwners(MemoryOwnerStore(), down, ttl_seconds=60)
    try:
        with pytest.raises(GatewayError) as caught:
            owners.require(new_id(), TENANT_A)
    finally:
        down.dispose()
    assert (caught.value.status, caught.value.code) == (503, "ownership_unavailable")
