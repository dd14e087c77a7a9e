"""Both cache stores keep one contract: entries with a TTL, and single-flight claims.

The Redis store runs on a real Redis (database 12, emptied before and after);
the in-process store on a clock the tests move by hand.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.cache_store import (
    CacheStore,
    CacheUnavailable,
    MemoryCacheStore,
    RedisCacheStore,
    claim_key,
    entry_key,
)

CACHE_REDIS_URL = "redis://127.0.0.1:6379/12"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def cache_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(CACHE_REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> CacheStore:
    if request.param == "redis":
        return RedisCacheStore(request.getfixturevalue("cache_redis"))
    return MemoryCacheStore(1 << 20)


@pytest.fixture()
def key() -> str:
    return uuid.uuid4().hex


def test_put_then_get(store: CacheStore, key: str) -> None:
    assert store.get(key) is None
    store.put(key, b"answer", 60)
    assert store.get(key) == b"answer"


def test_only_one_caller_claims_a_key_until_it_releases(store: CacheStore, key: str) -> None:
    token = store.claim(key, 30)
    assert token is not None
    assert store.claim(key, 30) is None
    store.release(key, "not-the-token")
    assert store.claim(key, 30) is None
    store.release(key, token)
    assert store.claim(key, 30) is not None


def test_concurrent_claims_have_one_winner(store: CacheStore, key: str) -> None:
    barrier = threading.Barrier(8)

    def claim(_: int) -> str | None:
        barrier.wait()
        return store.claim(key, 30)

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(claim, range(8)))
    assert sum(token is not None for token in tokens) == 1


def test_wait_returns_the_entry_the_leader_stores(store: CacheStore, key: str) -> None:
    token = store.claim(key, 30)
    assert token is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, key, 10)
        store.put(key, b"the answer", 60)
        store.release(key, token)
        assert waiting.result(timeout=10) == b"the answer"


def test_wait_returns_none_when_the_leader_gives_up(store: CacheStore, key: str) -> None:
    token = store.claim(key, 30)
    assert token is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, key, 10)
        store.release(key, token)
        assert waiting.result(timeout=10) is None


def test_wait_is_bounded(store: CacheStore, key: str) -> None:
    assert store.claim(key, 30) is not None
    assert store.wait(key, 0.05) is None


def test_wait_without_a_claim_returns_at_once(store: CacheStore, key: str) -> None:
    assert store.wait(key, 30) is None
    store.put(key, b"x", 60)
    assert store.wait(key, 30) == b"x"


# -- Redis specifics --------------------------------------------------------------------------


def test_redis_entry_and_claim_carry_their_expiry(cache_redis: redis.Redis, key: str) -> None:
    store = RedisCacheStore(cache_redis)
    store.put(key, b"x", 7)
    assert store.claim(key, 2.5) is not None
    assert 6_000 < cache_redis.pttl(entry_key(key)) <= 7_000
    assert 1_500 < cache_redis.pttl(claim_key(key)) <= 2_500


def test_redis_outage_raises_cache_unavailable() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    store = RedisCacheStore(dead)
    with pytest.raises(CacheUnavailable):
        store.get("k")
    with pytest.raises(CacheUnavailable):
        store.put("k", b"v", 1)
    with pytest.raises(CacheUnavailable):
        store.claim("k", 1)
    dead.close()


# -- in-process specifics ---------------------------------------------------------------------


def test_memory_entries_expire_with_their_ttl() -> None:
    clock = Clock()
    store = MemoryCacheStore(1 << 20, clock=clock)
    store.put("k", b"v", 5)
    clock.now += 4.9
    assert store.get("k") == b"v"
    clock.now += 0.2
    assert store.get("k") is None
    assert store.size_bytes == 0


def test_memory_store_evicts_least_recently_used_beyond_its_size() -> None:
    store = MemoryCacheStore(30)
    store.put("a", b"x" * 10, 60)
    store.put("b", b"x" * 10, 60)
    store.put("c", b"x" * 10, 60)
    assert store.get("a") is not None  # a is now the most recently used
    store.put("d", b"x" * 10, 60)
    assert [store.get(k) is not None for k in "abcd"] == [True, False, True, True]
    assert store.size_bytes == 30
    store.put("huge", b"x" * 31, 60)  # larger than the whole store: not kept
    assert store.get("huge") is None and store.size_bytes == 30


def test_memory_claim_expires_and_can_be_taken_again() -> None:
    clock = Clock()
    store = MemoryCacheStore(1 << 20, clock=clock)
    stale = store.claim("k", 2)
    assert stale is not None
    clock.now += 2.1
    fresh = store.claim("k", 2)
    assert fresh is not None
    store.release("k", stale)  # the expired holder cannot end the new claim
    assert store.claim("k", 2) is None
