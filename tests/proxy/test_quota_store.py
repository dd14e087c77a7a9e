"""The quota counters on their own, on real Redis and in process: the same semantics.

Time is an argument of every script, so expiry is tested at frozen instants."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis

from proxy.charge import Charge
from proxy.config_cache import ConfigCache
from proxy.errors import QuotaExceeded
from proxy.quota import Quotas, to_units
from proxy.quota_store import CountersMissing, Hold, MemoryQuotaStore, QuotaStore, RedisQuotaStore
from shared.catalogue import ModelEntry
from shared.db import make_engine, upgrade
from tests.proxy.limits_support import REDIS_STORE_URL, flushed_redis, principal_with

MONTH = "2031-05"
EXPIRE_AT = int(datetime(2031, 6, 8, tzinfo=UTC).timestamp())
NOW = datetime(2031, 5, 20, 12, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    with flushed_redis(REDIS_STORE_URL) as client:
        yield client


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest, redis_client: redis.Redis) -> QuotaStore:
    redis_client.flushdb()
    built: QuotaStore = (
        RedisQuotaStore(redis_client) if request.param == "redis" else MemoryQuotaStore()
    )
    built.replace(MONTH, {}, EXPIRE_AT)
    return built


def reserve(store: QuotaStore, rid: str, *holds: Hold, now: float = NOW, ttl: float = 60) -> object:
    return store.reserve(MONTH, rid, holds, now + ttl, now, EXPIRE_AT)


def test_reserve_holds_until_the_limit_and_refuses_past_it(store: QuotaStore) -> None:
    assert reserve(store, "a", Hold("user:1", 10, 600, usd_limit=1000)) is None
    refused = reserve(store, "b", Hold("user:1", 10, 600, usd_limit=1000))
    assert refused is not None
    assert (refused.index, refused.measure, refused.spent, refused.held) == (0, "usd", 0, 600)
    assert store.counters(MONTH, "user:1").held_usd == 600


def test_reserve_is_all_or_nothing_across_scopes(store: QuotaStore) -> None:
    refused = reserve(
        store,
        "a",
        Hold("user:1", 10, 600, token_limit=100),
        Hold("tenant:1", 10, 600, usd_limit=500),
    )
    assert refused is not None and (refused.index, refused.measure) == (1, "usd")
    assert store.counters(MONTH, "user:1").held_tokens == 0


def test_settle_replaces_the_hold_by_the_actual_usage_at_once(store: QuotaStore) -> None:
    assert reserve(store, "a", Hold("user:1", 100, 800, usd_limit=1000)) is None
    assert reserve(store, "b", Hold("user:1", 100, 800, usd_limit=1000)) is not None
    store.settle(MONTH, "a", ["user:1"], 20, 150, EXPIRE_AT)
    counters = store.counters(MONTH, "user:1")
    assert (counters.tokens, counters.usd, counters.held_tokens, counters.held_usd) == (
        20,
        150,
        0,
        0,
    )
    assert reserve(store, "b", Hold("user:1", 100, 800, usd_limit=1000)) is None


def test_an_abandoned_reservation_expires(store: QuotaStore) -> None:
    assert reserve(store, "crashed", Hold("user:1", 100, 900, usd_limit=1000), ttl=30) is None
    assert reserve(store, "early", Hold("user:1", 1, 200, usd_limit=1000), now=NOW + 29) is not None
    assert reserve(store, "later", Hold("user:1", 1, 200, usd_limit=1000), now=NOW + 31) is None
    assert store.counters(MONTH, "user:1").held_usd == 200
    # Settling the crashed call late still records what it used, once.
    store.settle(MONTH, "crashed", ["user:1"], 5, 50, EXPIRE_AT)
    assert store.counters(MONTH, "user:1").held_usd == 200
    assert store.counters(MONTH, "user:1").usd == 50


def test_a_month_without_counters_must_be_rebuilt_first(store: QuotaStore) -> None:
    with pytest.raises(CountersMissing):
        store.reserve("2031-06", "a", [Hold("user:1", 1, 1)], NOW + 60, NOW, EXPIRE_AT)
    store.replace("2031-06", {"user:1": (7, 70)}, EXPIRE_AT)
    assert store.counters("2031-06", "user:1").usd == 70


def test_replace_sets_every_counter_and_zeroes_the_rest(store: QuotaStore) -> None:
    store.settle(MONTH, "x", ["user:1", "user:2"], 5, 50, EXPIRE_AT)
    store.replace(MONTH, {"user:1": (3, 30)}, EXPIRE_AT)
    assert store.counters(MONTH, "user:1").usd == 30
    assert store.counters(MONTH, "user:2").usd == 0


def test_only_one_process_holds_the_rebuild_lock(store: QuotaStore) -> None:
    assert store.try_lock(MONTH, 5)
    assert not store.try_lock(MONTH, 5)
    store.unlock(MONTH)
    assert store.try_lock(MONTH, 5)


# -- Quotas on a frozen clock: months, messages, reservation expiry ----------------------------

DEAR = ModelEntry(
    "dear", "openai", "dear", Decimal(1000), Decimal(1000), Decimal(1000), Decimal(1000)
)


@pytest.fixture()
def quotas(sqlite_url: str) -> Iterator[tuple[Quotas, list[float]]]:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    clock = [datetime(2031, 5, 31, 23, 59, tzinfo=UTC).timestamp()]
    try:
        yield (
            Quotas(
                MemoryQuotaStore(),
                engine,
                ConfigCache(engine),
                reservation_ttl_seconds=30,
                clock=lambda: clock[0],
            ),
            clock,
        )
    finally:
        engine.dispose()


def test_a_spent_budget_names_its_limit_and_the_first_of_next_month(
    quotas: tuple[Quotas, list[float]],
) -> None:
    quota, clock = quotas
    principal = principal_with(monthly_usd=Decimal("0.05"))
    charge = Charge(prompt_tokens=10, completion_tokens=30)  # $0.04 at $1000/M
    reservation = quota.reserve("a", principal, None, [DEAR], charge)
    assert reservation.month == "2031-05" and reservation.usd == to_units(Decimal("0.04"))
    with pytest.raises(QuotaExceeded) as refused:
        quota.reserve("b", principal, None, [DEAR], charge)
    message = refused.value.message
    assert "the monthly USD budget of user someone@example.com ($0.05 a month)" in message
    assert "resets on 2031-06-01 (UTC)" in message
    assert refused.value.headers == {"x-should-retry": "false", "Retry-After": "60"}
    clock[0] += 120  # a new month: its counters start from the (empty) log
    assert quota.reserve("c", principal, None, [DEAR], charge).month == "2031-06"


def test_a_crashed_calls_hold_frees_itself_after_the_reservation_ttl(
    quotas: tuple[Quotas, list[float]],
) -> None:
    quota, clock = quotas
    clock[0] -= 3600  # well inside May
    principal = principal_with(monthly_tokens=50)
    charge = Charge(prompt_tokens=10, completion_tokens=30)
    quota.reserve("crashed", principal, None, [DEAR], charge)  # never settled
    with pytest.raises(QuotaExceeded):
        quota.reserve("next", principal, None, [DEAR], charge)
    clock[0] += 31
    quota.reserve("next", principal, None, [DEAR], charge)
