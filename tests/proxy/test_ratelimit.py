"""Rate limits: requests and tokens per minute per user, key and end user; per IP without
a key; x-ratelimit-* on every answer; 429 with Retry-After in both dialects; exact across
two proxy processes (one in-process, one gunicorn) sharing one Redis."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import time_machine
from click.testing import CliRunner
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from proxy.charge import REQUEST_OVERHEAD_TOKENS
from proxy.cli import main
from proxy.errors import RateLimited
from proxy.ratelimit import RateLimits, build_rate_limits, format_duration, seconds_until_fits
from proxy.simulator import SimulatorThread
from shared import accounts
from shared.accounts import Limits
from shared.db import transaction, upgrade
from shared.settings import Settings
from shared.tokens import estimate_prompt_tokens
from tests.proxy.limits_support import (
    REDIS_PROXY_URL,
    Account,
    GunicornProxy,
    ask,
    client_for,
    flushed_redis,
    make_account,
    principal_with,
    unique_id,
)
from tests.support import (
    ProxyServer,
    create_pg_database,
    drop_pg_database,
    running_proxy,
    wait_for,
)
from tests.support import settings_for as base_settings

DIALECTS = ("openai", "anthropic")
UNAUTHENTICATED_RPM = 3


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_pg_database()
    upgrade(url)
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[redis.Redis]:
    with flushed_redis(REDIS_PROXY_URL) as client:
        yield client


@pytest.fixture(scope="module")
def local(
    database: str,
    shared_redis: redis.Redis,
    simulator: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    settings = base_settings(
        database,
        simulator.base_url,
        tmp_path_factory.mktemp("local"),
        redis_url=REDIS_PROXY_URL,
        unauthenticated_rpm=UNAUTHENTICATED_RPM,
    )
    with running_proxy(settings) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def remote_process(
    database: str,
    shared_redis: redis.Redis,
    simulator: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GunicornProxy]:
    """The same proxy as a gunicorn subprocess on the same PostgreSQL and Redis; it boots
    while this module's other tests run."""
    process = GunicornProxy(
        database, REDIS_PROXY_URL, simulator.base_url, tmp_path_factory.mktemp("remote")
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def remote(remote_process: GunicornProxy) -> str:
    return remote_process.ready()


def account(proxy: ProxyServer, **kwargs: object) -> Account:
    return make_account(proxy.state.engine, **kwargs)  # type: ignore[arg-type]


# -- refusals, both dialects ----------------------------------------------------------------

REFUSALS = [
    # (case, account limits, call options, expected OpenAI type, refused on call number)
    pytest.param("user rpm", {"limits": Limits(rpm=1)}, {}, "requests", 2, id="user-rpm"),
    pytest.param("key rpm", {"key_limits": Limits(rpm=1)}, {}, "requests", 2, id="key-rpm"),
    pytest.param(
        "end user rpm",
        {"end_user_limits": Limits(rpm=1)},
        {"end_user": "alice"},
        "requests",
        2,
        id="end-user-rpm",
    ),
    pytest.param(
        "user tpm", {"limits": Limits(tpm=120)}, {"max_tokens": 100}, "tokens", 2, id="user-tpm"
    ),
    pytest.param(
        "too large", {"limits": Limits(tpm=50)}, {"max_tokens": 100}, "tokens", 1, id="too-large"
    ),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("case", "setup", "options", "openai_type", "refused_on"), REFUSALS)
def test_rate_limit_refusals(
    local: ProxyServer,
    dialect: str,
    case: str,
    setup: dict[str, object],
    options: dict[str, object],
    openai_type: str,
    refused_on: int,
) -> None:
    acct = account(local, **setup)
    with client_for(dialect, local.base_url, acct.key) as client:
        outcomes = [ask(client, **options) for _ in range(refused_on)]  # type: ignore[arg-type]
    *served, refused = outcomes
    assert [outcome.status for outcome in served] == [200] * len(served)
    assert refused.status == 429
    if dialect == "openai":
        assert refused.body["error"]["code"] == "rate_limit_exceeded"
        assert refused.error_type == openai_type
    else:
        assert refused.body["type"] == "error"
        assert refused.error_type == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    remaining = int(refused.headers[f"x-ratelimit-remaining-{openai_type}"])
    assert remaining == 0 if openai_type == "requests" else remaining < 113  # what it asked
    assert f"x-ratelimit-limit-{openai_type}" in refused.headers
    if case == "too large":  # waiting cannot help: the SDKs must not retry
        assert refused.headers["x-should-retry"] == "false"
        assert "Request too large" in refused.message
    else:
        assert "x-should-retry" not in refused.headers
    if case == "end user rpm":
        assert "end user 'alice'" in refused.message
    record, _ = local.record(refused.record_id)
    assert (record.status, record.refusal_reason, record.error_code) == (
        429,
        "rate_limit",
        "rate_limit_exceeded",
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_failed_authentication_is_limited_per_ip(
    local: ProxyServer, shared_redis: redis.Redis, dialect: str
) -> None:
    for key in shared_redis.scan_iter(match="*unauthenticated*"):
        shared_redis.delete(key)
    with client_for(dialect, local.base_url, "mg-not-a-real-key-0123456789") as client:
        outcomes = [ask(client) for _ in range(UNAUTHENTICATED_RPM + 1)]
    assert [o.status for o in outcomes] == [401] * UNAUTHENTICATED_RPM + [429]
    assert int(outcomes[-1].headers["retry-after"]) >= 1
    assert outcomes[-1].headers["x-ratelimit-limit-requests"] == str(UNAUTHENTICATED_RPM)
    assert "invalid API key" in outcomes[-1].message
    record, _ = local.record(outcomes[-1].record_id)
    assert record.refusal_reason == "rate_limit"


def test_a_valid_key_is_not_refused_for_its_ips_failures(
    local: ProxyServer, shared_redis: redis.Redis
) -> None:
    with client_for("openai", local.base_url, "mg-not-a-real-key-0123456789") as client:
        for _ in range(UNAUTHENTICATED_RPM + 1):
            ask(client)
    acct = account(local)
    with client_for("openai", local.base_url, acct.key) as client:
        assert ask(client).status == 200


# -- headers and the token correction ------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_every_answer_carries_the_gateways_rate_limit_headers(
    local: ProxyServer, dialect: str, stream: bool
) -> None:
    acct = account(local, limits=Limits(rpm=10, tpm=5000), key_limits=Limits(rpm=4))
    with client_for(dialect, local.base_url, acct.key) as client:
        outcome = ask(client, stream=stream, max_tokens=50)
    assert outcome.status == 200
    headers = outcome.headers
    # The key's 4/min is stricter than the user's 10/min: the headers report it.
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "4",
        "3",
    )
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    charged = estimate_prompt_tokens(["hi"]) + REQUEST_OVERHEAD_TOKENS + 50
    assert headers["x-ratelimit-remaining-tokens"] == str(5000 - charged)
    if dialect == "openai":  # the simulator's own limits are renamed, not dropped
        assert "x-upstream-ratelimit-limit-requests" in headers


def test_no_rate_limit_headers_without_limits(local: ProxyServer) -> None:
    acct = account(local)
    with client_for("openai", local.base_url, acct.key) as client:
        outcome = ask(client)
    assert outcome.status == 200
    assert not [name for name in outcome.headers if name.startswith("x-ratelimit-")]
    assert "x-upstream-ratelimit-remaining-tokens" in outcome.headers


def test_token_charge_is_corrected_to_actual_usage(local: ProxyServer) -> None:
    acct = account(local, limits=Limits(tpm=10_000))
    charged = estimate_prompt_tokens(["hi"]) + REQUEST_OVERHEAD_TOKENS + 200
    with client_for("openai", local.base_url, acct.key) as client:
        first = ask(client, max_tokens=200)
        second = ask(client, max_tokens=200)
    used = first.body["usage"]["total_tokens"]
    assert used < charged
    assert first.headers["x-ratelimit-remaining-tokens"] == str(10_000 - charged)
    # The first call's unused charge was given back as soon as it was over.
    assert second.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used - charged)


def test_end_user_limits_apply_to_each_end_user(local: ProxyServer) -> None:
    acct = account(local, limits=Limits(rpm=100), end_user_limits=Limits(rpm=2))
    with client_for("openai", local.base_url, acct.key) as client:
        alice = [ask(client, end_user="alice").status for _ in range(3)]
        bob = [ask(client, end_user="bob").status for _ in range(2)]
        anonymous = [ask(client).status for _ in range(3)]
    assert (alice, bob, anonymous) == ([200, 200, 429], [200, 200], [200, 200, 200])


def test_a_cache_hit_counts_as_a_request(local: ProxyServer) -> None:
    acct = account(local, limits=Limits(rpm=2, cache_ttl_seconds=60))
    with client_for("openai", local.base_url, acct.key) as client:
        outcomes = [ask(client, text="the same question") for _ in range(3)]
    assert [(o.status, o.headers.get("x-metergate-cache")) for o in outcomes] == [
        (200, "miss"),
        (200, "hit"),
        (429, "miss"),
    ]


def test_limits_set_from_the_cli_reach_the_proxy_within_seconds(
    local: ProxyServer, database: str
) -> None:
    acct = account(local)
    with client_for("openai", local.base_url, acct.key) as client:
        assert ask(client, end_user="carol").status == 200
        with transaction(local.state.engine) as session:
            accounts.create_tier(session, f"per-person-{acct.key_id}", Limits(rpm=1))
        command = ["key", "limit", str(acct.key_id), "--end-user-tier", f"per-person-{acct.key_id}"]
        result = CliRunner().invoke(main, command, env={"METERGATE_DATABASE_URL": database})
        assert result.exit_code == 0, result.output
        # carol's first call since the change may pass; then her limit of one a minute holds.
        wait_for(lambda: ask(client, end_user="carol").status == 429, timeout=5)
        assert ask(client, end_user="dave").status == 200


def test_the_embedded_mode_enforces_the_same_limits(
    simulator: SimulatorThread, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    settings = base_settings(url, simulator.base_url, tmp_path, unauthenticated_rpm=1)
    with running_proxy(settings) as proxy:
        acct = account(proxy, limits=Limits(rpm=2), end_user_limits=Limits(rpm=1))
        with client_for("anthropic", proxy.base_url, acct.key) as client:
            statuses = [ask(client).status for _ in range(3)]
        acct = account(proxy, end_user_limits=Limits(rpm=1))
        with client_for("openai", proxy.base_url, acct.key) as client:
            per_end_user = [ask(client, end_user=who).status for who in ("a", "a", "b")]
        with client_for("openai", proxy.base_url, "mg-wrong-key-0123456789abcdef") as client:
            unauthenticated = [ask(client).status for _ in range(2)]
    assert statuses == [200, 200, 429]
    assert per_end_user == [200, 429, 200]
    assert unauthenticated == [401, 429]


# -- window logic, frozen time -------------------------------------------------------------

MINUTE_BOUNDARY = datetime.fromtimestamp(1_800_000_000, UTC)  # a multiple of 60 s


def test_request_window_slides_with_time() -> None:
    principal = principal_with(rpm=2)
    with time_machine.travel(MINUTE_BOUNDARY, tick=False) as traveller:
        limits = memory_limits()
        limits.check(principal, None, 1)
        traveller.shift(10)
        limits.check(principal, None, 1)
        traveller.shift(20)
        with pytest.raises(RateLimited) as refused:
            limits.check(principal, None, 1)
        # The first hit leaves the window just after 60 s.
        assert refused.value.headers["Retry-After"] == "31"
        traveller.shift(31)
        grant = limits.check(principal, None, 1)
    assert grant.requests is not None and grant.requests.remaining == 0


def test_token_window_weighs_the_previous_minute() -> None:
    principal = principal_with(tpm=100)
    with time_machine.travel(MINUTE_BOUNDARY, tick=False) as traveller:
        limits = memory_limits()
        limits.check(principal, None, 60)
        traveller.shift(60)  # the 60 tokens now weigh fully as the previous window
        with pytest.raises(RateLimited) as refused:
            limits.check(principal, None, 60)
        # 60 * (60 - t) / 60 + 60 <= 100 once t >= 20 s
        assert refused.value.headers["Retry-After"] == "21"
        traveller.shift(21)
        limits.check(principal, None, 60)


def test_unused_tokens_are_given_back_at_once() -> None:
    principal = principal_with(tpm=100)
    with time_machine.travel(MINUTE_BOUNDARY, tick=False):
        limits = memory_limits()
        grant = limits.check(principal, None, 90)
        with pytest.raises(RateLimited):
            limits.check(principal, None, 90)
        limits.correct(grant, 10)
        limits.check(principal, None, 90)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0201, "21ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.9821, "59.983s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
    ],
)
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("window", "cost", "expected"),
    [
        ((0, 0.0, 0, 0.0), 50, 0.0),  # empty
        ((0, 0.0, 60, 100.0), 40, 0.0),  # fits now
        ((60, 60.0, 0, 120.0), 60, 20.0),  # previous decays: 60 * (60 - t) / 60 <= 40
        ((0, 0.0, 80, 90.0), 60, 30.0 + 30.0),  # shift in 30 s, then 80 * (60 - t) / 60 <= 40
        ((0, 0.0, 0, 0.0), 101, math.inf),  # larger than the limit: never
    ],
)
def test_seconds_until_tokens_fit(
    window: tuple[int, float, int, float], cost: int, expected: float
) -> None:
    assert seconds_until_fits(100, cost, window) == pytest.approx(expected)


# -- exact across processes (last: the gunicorn process boots while the rest run) -------


def test_requests_per_minute_are_exact_across_two_processes(
    local: ProxyServer, remote: str
) -> None:
    acct = account(local, limits=Limits(rpm=5))
    with (
        client_for("openai", local.base_url, acct.key) as here,
        client_for("openai", remote, acct.key) as there,
        ThreadPoolExecutor(16) as pool,
    ):
        outcomes = list(pool.map(lambda client: ask(client).status, [here, there] * 8))
    assert sorted(outcomes) == [200] * 5 + [429] * 11


def test_token_limits_are_exact_across_limiters_sharing_redis(
    shared_redis: redis.Redis,
) -> None:
    """Two processes' limiters (two apps) on one Redis: exactly tpm / charge calls pass."""
    first, second = (redis_limits() for _ in range(2))
    principal = principal_with(tpm=1000, user_id=unique_id())

    def call(limits: RateLimits) -> bool:
        try:
            limits.check(principal, None, 100)
        except RateLimited:
            return False
        return True

    with ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(call, [first, second] * 15)) == 10


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_a_refused_call_takes_no_tokens(shared_redis: redis.Redis, store: str) -> None:
    """On Redis the widest requests limit and the token charge share one round trip, so a
    call refused for requests was charged tokens too: the charge is given back."""
    limits = redis_limits() if store == "redis" else memory_limits()
    principal = principal_with(rpm=1, tpm=1000, user_id=unique_id())
    served = limits.check(principal, None, 300)
    with pytest.raises(RateLimited) as refused:
        limits.check(principal, None, 300)
    assert refused.value.openai_type == "requests"
    assert served.tokens is not None and served.tokens.remaining == 700
    limits.correct(served, 100)
    after = limits.check(principal_with(rpm=5, tpm=1000, user_id=principal.user_id), None, 0)
    assert after.tokens is not None and after.tokens.remaining == 900


def test_the_limiter_adds_no_per_request_hooks_and_still_limits() -> None:
    """The stages call the limiter themselves: flask-limiter's own before/after/teardown
    hooks are taken off the app (they only cost CPU), and its strategies still count."""
    app = Flask(__name__)
    limits = build_rate_limits(app, Settings(redis_url=""), None)
    hooks = [*app.before_request_funcs.get(None, []), *app.after_request_funcs.get(None, [])]
    assert [*hooks, *app.teardown_request_funcs.get(None, [])] == []
    principal = principal_with(rpm=1, tpm=1000)
    limits.check(principal, None, 10)
    with pytest.raises(RateLimited):
        limits.check(principal, None, 10)


# -- helpers -------------------------------------------------------------------------------


def memory_limits() -> RateLimits:
    limiter = Limiter(
        get_remote_address, app=Flask(__name__), strategy="moving-window", storage_uri="memory://"
    )
    return RateLimits(limiter, unauthenticated_rpm=10)


def redis_limits() -> RateLimits:
    limiter = Limiter(
        get_remote_address,
        app=Flask(__name__),
        strategy="moving-window",
        storage_uri=REDIS_PROXY_URL,
        storage_options={"key_prefix": "mg:rl"},
    )
    return RateLimits(limiter, unauthenticated_rpm=10)
