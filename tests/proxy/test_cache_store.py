"""Both cache stores keep one contract: entries with a TTL, and single-flight claims,
through the two steps the cache takes (``get_or_claim``, ``put_and_release``) and ``wait``.

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


def get(store: CacheStore, key: str) -> bytes | None:
    """Read only: no claim asked for."""
    return store.get_or_claim(key, None).value


def put(store: CacheStore, key: str, value: bytes, ttl_seconds: int) -> None:
    store.put_and_release(key, value, ttl_seconds, None)


def claim(store: CacheStore, key: str, hold_seconds: float) -> str | None:
    found = store.get_or_claim(key, hold_seconds)
    assert found.value is None, "a claim is only taken on a miss"
    return found.token


def release(store: CacheStore, key: str, token: str) -> None:
    store.put_and_release(key, None, 0, token)


def test_put_then_get(store: CacheStore, key: str) -> None:
    assert get(store, key) is None
    put(store, key, b"answer", 60)
    assert get(store, key) == b"answer"


def test_only_one_caller_claims_a_key_until_it_releases(store: CacheStore, key: str) -> None:
    token = claim(store, key, 30)
    assert token is not None
    assert claim(store, key, 30) is None
    release(store, key, "not-the-token")
    assert claim(store, key, 30) is None
    release(store, key, token)
    assert claim(store, key, 30) is not None


def test_concurrent_claims_have_one_winner(store: CacheStore, key: str) -> None:
    barrier = threading.Barrier(8)

    def take(_: int) -> str | None:
        barrier.wait()
        return claim(store, key, 30)

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(take, range(8)))
    assert sum(token is not None for token in tokens) == 1


def test_wait_returns_the_entry_the_leader_stores(store: CacheStore, key: str) -> None:
    token = claim(store, key, 30)
    assert token is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, key, 10)
        store.put_and_release(key, b"the answer", 60, token)
        assert waiting.result(timeout=10) == b"the answer"


def test_wait_returns_none_when_the_leader_gives_up(store: CacheStore, key: str) -> None:
    token = claim(store, key, 30)
    assert token is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, key, 10)
        release(store, key, token)
        assert waiting.result(timeout=10) is None


def test_wait_is_bounded(store: CacheStore, key: str) -> None:
    assert claim(store, key, 30) is not None
    assert store.wait(key, 0.05) is None


def test_wait_without_a_claim_returns_at_once(store: CacheStore, key: str) -> None:
    assert store.wait(key, 30) is None
    put(store, key, b"x", 60)
    assert store.wait(key, 30) == b"x"


# -- Redis specifics --------------------------------------------------------------------------


def test_redis_entry_and_claim_carry_their_expiry(cache_redis: redis.Redis, key: str) -> None:
    store = RedisCacheStore(cache_redis)
    token = claim(store, key, 2.5)
    assert token is not None
    put(store, key, b"x", 7)  # stored, the claim kept
    assert 6_000 < cache_redis.pttl(entry_key(key)) <= 7_000
    assert 1_500 < cache_redis.pttl(claim_key(key)) <= 2_500


def test_redis_outage_raises_cache_unavailable() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    store = RedisCacheStore(dead)
    with pytest.raises(CacheUnavailable):
        get(store, "k")
    with pytest.raises(CacheUnavailable):
        put(store, "k", b"v", 1)
    with pytest.raises(CacheUnavailable):
        claim(store, "k", 1)
    with pytest.raises(CacheUnavailable):
        store.wait("k", 1)
    dead.close()


# -- in-process specifics ---------------------------------------------------------------------


def test_memory_entries_expire_with_their_ttl() -> None:
    clock = Clock()
    store = MemoryCacheStore(1 << 20, clock=clock)
    put(store, "k", b"v", 5)
    clock.now += 4.9
    assert get(store, "k") == b"v"
    clock.now += 0.2
    assert get(store, "k") is None
    assert store.size_bytes == 0


def test_memory_store_evicts_least_recently_used_beyond_its_size() -> None:
    store = MemoryCacheStore(30)
    put(store, "a", b"x" * 10, 60)
    put(store, "b", b"x" * 10, 60)
    put(store, "c", b"x" * 10, 60)
    assert get(store, "a") is not None  # a is now the most recently used
    put(store, "d", b"x" * 10, 60)
    assert [get(store, k) is not None for k in "abcd"] == [True, False, True, True]
    assert store.size_bytes == 30
    put(store, "huge", b"x" * 31, 60)  # larger than the whole store: not kept
    assert get(store, "huge") is None and store.size_bytes == 30


def test_memory_claim_expires_and_can_be_taken_again() -> None:
    clock = Clock()
    store = MemoryCacheStore(1 << 20, clock=clock)
    stale = claim(store, "k", 2)
    assert stale is not None
    clock.now += 2.1
    fresh = claim(store, "k", 2)
    assert fresh is not None
    release(store, "k", stale)  # the expired holder cannot end the new claim
    assert claim(store, "k", 2) is None
