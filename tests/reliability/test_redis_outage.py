"""Redis frozen, stopped and restarted under traffic: limits and quotas fail closed (503,
or open when configured), the cache fails open, no worker hangs or dies, and the quota
counters come back equal to the SQL ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx2
from sqlalchemy import Engine, select

from proxy.quota import to_units
from proxy.quota_store import RedisQuotaStore
from proxy.simulator import SimulatorThread
from shared.accounts import Limits
from shared.models import User
from shared.usage import month_of, month_usage
from tests.reliability.conftest import Stack, record_counts, records_by_client_id
from tests.reliability.services import RedisServer, sim_stats
from tests.reliability.traffic import (
    Traffic,
    body_for,
    error_shape_problems,
    send,
)
from tests.support import Accounts, running_proxy, seed_accounts, settings_for, wait_for

LIMITS_DOWN = {"rate_limits_unavailable", "quota_unavailable"}
REDIS_TIMEOUT_SECONDS = 2.0  # the proxy's Redis socket timeout


def assert_counters_match_the_ledger(redis_server: RedisServer, engine: Engine, acct: Accounts):
    """The key's, user's and tenant's Redis counters equal what SQL says they used."""
    month = month_of(datetime.now(UTC))
    with engine.connect() as connection:
        user = connection.execute(select(User).where(User.email == acct.user)).one()
    ledger = month_usage(engine, month)
    client = redis_server.client()
    try:
        store = RedisQuotaStore(client)
        for scope, spent in (
            (f"key:{acct.key_id}", ledger.keys.get(acct.key_id)),
            (f"user:{user.id}", ledger.users.get(user.id)),
            (f"tenant:{user.tenant_id}", ledger.tenants.get(user.tenant_id)),
        ):
            assert spent is not None and spent.tokens > 0, scope
            counters = store.counters(month, scope)
            assert (counters.tokens, counters.usd) == (spent.tokens, to_units(spent.usd)), scope
            assert (counters.held_tokens, counters.held_usd) == (0, 0), scope
    finally:
        client.close()


def test_redis_frozen_or_stopped_mid_traffic_fails_closed_then_recovers(stack: Stack) -> None:
    acct = seed_accounts(
        stack.engine,
        limits=Limits(
            rpm=100_000, monthly_tokens=10**9, monthly_usd=Decimal(1000), cache_ttl_seconds=300
        ),
    )
    workers = stack.proxy.worker_pids()
    with Traffic(stack.base_url, acct.key, label="redis-outage") as traffic:
        wait_for(lambda: traffic.count(200) >= 12, timeout=60)

        # Up but unresponsive: calls are refused within the Redis client's timeout.
        frozen_at = len(traffic.outcomes)
        stack.redis.freeze()
        try:
            wait_for(lambda: traffic.count(503, since=frozen_at) >= 3, timeout=60)
        finally:
            stack.redis.thaw()
        thawed_at = len(traffic.outcomes)
        wait_for(lambda: traffic.count(200, since=thawed_at) >= 6, timeout=60)

        # Stopped (its data gone): refused at once; a bad key is still a 401.
        stopped_at = len(traffic.outcomes)
        stack.redis.stop()
        wait_for(lambda: traffic.count(503, since=stopped_at) >= 6, timeout=60)
        with httpx2.Client(base_url=stack.base_url, timeout=30) as client:
            stranger = send(client, "openai", "mg-" + "x" * 40, body_for("openai", "hi"))
        assert stranger.status == 401, stranger.text

        # Restarted empty: calls go through again, counters rebuilt from the SQL log.
        stack.redis.start()
        restarted_at = len(traffic.outcomes)
        wait_for(lambda: traffic.count(200, since=restarted_at) >= 12, timeout=60)

    outcomes = traffic.outcomes
    refused = [o for o in outcomes if o.status == 503]
    assert {o.status for o in outcomes} == {200, 503}, {o.status for o in outcomes}
    assert not [o for o in outcomes if o.status == 200 and o.has_error_event]
    for outcome in refused:
        assert not error_shape_problems(outcome), error_shape_problems(outcome)
        assert outcome.headers.get("retry-after") == "1"
    # No hung worker: even a frozen Redis costs a call a few client timeouts at most.
    assert max(o.seconds for o in outcomes) < 4 * REDIS_TIMEOUT_SECONDS + 2
    assert min(o.seconds for o in outcomes[frozen_at:thawed_at] if o.status == 503) < (
        REDIS_TIMEOUT_SECONDS + 1.5
    )
    assert stack.proxy.worker_pids() == workers  # no worker died

    ids = [o.request_id for o in outcomes] + [stranger.request_id]
    wait_for(lambda: len(record_counts(stack.engine, ids)) == len(ids), timeout=30)
    assert set(record_counts(stack.engine, ids).values()) == {1}
    records = records_by_client_id(stack.engine, [o.request_id for o in refused])
    assert {r.error_code for r in records.values()} <= LIMITS_DOWN
    assert {r.status for r in records.values()} == {503}
    assert_counters_match_the_ledger(stack.redis, stack.engine, acct)


def test_limits_fail_open_when_configured_and_the_cache_always_fails_open(
    rel_db_url: str, rel_simulator: SimulatorThread, tmp_path: Path
) -> None:
    redis_server = RedisServer().start()
    settings = settings_for(
        rel_db_url, rel_simulator.base_url, tmp_path, redis_url=redis_server.url
    )
    settings = settings.model_copy(update={"limits_fail_open": True})
    try:
        with (
            running_proxy(settings) as proxy,
            httpx2.Client(base_url=proxy.base_url, timeout=30) as client,
        ):
            acct = seed_accounts(
                proxy.state.engine,
                limits=Limits(rpm=3, monthly_tokens=10**9, cache_ttl_seconds=300),
            )

            def ask(text: str) -> tuple[int, str | None, int]:
                before = sim_stats(rel_simulator.base_url)["total"]
                outcome = send(client, "openai", acct.key, body_for("openai", text))
                calls = sim_stats(rel_simulator.base_url)["total"] - before
                return outcome.status, outcome.headers.get("x-metergate-cache"), calls

            assert ask("cached question") == (200, "miss", 1)
            assert ask("cached question") == (200, "hit", 0)
            redis_server.stop()
            # No limit holds while Redis is away (rpm is 3), and the cache is a miss.
            during = [ask("cached question") for _ in range(5)]
            assert during == [(200, "miss", 1)] * 5
            stranger = send(client, "openai", "mg-" + "y" * 40, body_for("openai", "hi"))
            assert stranger.status == 401
            redis_server.start()
            # Back: counters rebuilt from the log (the outage calls included), limits hold.
            assert [ask(f"after {n}")[0] for n in range(4)] == [200, 200, 200, 429]
            proxy.flush()
            assert_counters_match_the_ledger(redis_server, proxy.state.engine, acct)
    finally:
        redis_server.stop()
