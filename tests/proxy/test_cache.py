"""The response cache end to end: the real SDKs against the proxy on Redis and embedded.

Each mode gets its own proxy and database, and the module its own simulator (reset
before every test, so ``/_sim/stats`` counts this test's upstream calls only). Redis
mode runs on PostgreSQL and Redis database 12; embedded mode on SQLite and in-process
storage. ``acct``, ``oai``, ``claude`` and ``http`` here shadow the conftest fixtures
of the same names: the same things, on this module's proxies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.cache import cache_key
from proxy.cache_store import entry_key
from proxy.simulator import SimulatorThread
from shared import accounts
from shared.accounts import Limits, TierPolicy
from shared.db import transaction
from shared.models import Tenant
from tests.support import (
    Accounts,
    ProxyServer,
    create_pg_database,
    drop_pg_database,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

CACHE_REDIS_URL = "redis://127.0.0.1:6379/12"
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
GPT = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
CLAUDE_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
}
LONG_SYSTEM = " ".join(f"rule {i}: be kind." for i in range(400))  # ~2400 tokens


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorThread]:
    with SimulatorThread() as simulator:
        yield simulator


@pytest.fixture(scope="module")
def cache_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(CACHE_REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def cache_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own: its records stay out of other tests' sums."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module", params=["redis", "embedded"])
def gw(
    request: pytest.FixtureRequest,
    upstream: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    data_dir = Path(tmp_path_factory.mktemp(f"cache-{request.param}"))
    if request.param == "redis":
        request.getfixturevalue("cache_redis")
        db_url = request.getfixturevalue("cache_pg_url")
        overrides: dict[str, Any] = {"redis_url": CACHE_REDIS_URL}
    else:
        db_url = f"sqlite:///{data_dir / 'metergate.sqlite3'}"
        overrides = {}
    # One attempt upstream: a failed leader must fail, not be retried into success.
    settings = settings_for(db_url, upstream.base_url, data_dir, retry_max_attempts=1, **overrides)
    with running_proxy(settings) as server:
        yield server


@pytest.fixture(scope="module")
def control(upstream: SimulatorThread) -> Iterator[httpx.Client]:
    """Plain HTTP to the simulator's ``/_sim`` endpoints."""
    with httpx.Client(base_url=upstream.base_url, timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def fresh_upstream(control: httpx.Client) -> Iterator[None]:
    control.post("/_sim/reset").raise_for_status()
    yield
    control.post("/_sim/config", json={"latency_ms": 0}).raise_for_status()
    control.delete("/_sim/faults").raise_for_status()


@pytest.fixture(scope="module")
def http(gw: ProxyServer) -> Iterator[httpx.Client]:
    """Plain HTTP to the proxy, for exact bodies and odd headers."""
    with httpx.Client(base_url=gw.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def sdks(gw: ProxyServer) -> Iterator[tuple[openai.OpenAI, anthropic.Anthropic]]:
    """One client per SDK for the module (building one takes ~0.2 s); tests pick the key."""
    with (
        openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unset", max_retries=0) as oai,
        anthropic.Anthropic(base_url=gw.base_url, api_key="unset", max_retries=0) as claude,
    ):
        yield oai, claude


@pytest.fixture()
def acct(gw: ProxyServer) -> Accounts:
    """A fresh tenant whose tier caches answers for a minute."""
    return seed_accounts(gw.state.engine, limits=Limits(cache_ttl_seconds=60))


@pytest.fixture()
def oai(sdks: tuple[openai.OpenAI, anthropic.Anthropic], acct: Accounts) -> openai.OpenAI:
    return sdks[0].with_options(api_key=acct.key)


@pytest.fixture()
def claude(sdks: tuple[openai.OpenAI, anthropic.Anthropic], acct: Accounts) -> anthropic.Anthropic:
    return sdks[1].with_options(api_key=acct.key)


def upstream_calls(control: httpx.Client, path: str) -> int:
    return int(control.get("/_sim/stats").json()["by_path"].get(path, 0))


def last_upstream_body(control: httpx.Client) -> dict[str, Any]:
    requests = control.get("/_sim/requests", params={"limit": 1}).json()["requests"]
    return dict(requests[-1]["body"])


def ask(client: openai.OpenAI, text: str, **options: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=GPT, messages=[{"role": "user", "content": text}], **options
    )


def ask_claude(client: anthropic.Anthropic, text: str, **options: Any) -> Any:
    return client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": text}], **options
    )


# -- hits and misses -------------------------------------------------------------------------


def test_repeated_call_is_a_hit_served_without_an_upstream_call(
    gw: ProxyServer, control: httpx.Client, oai: openai.OpenAI
) -> None:
    first = ask(oai, "what is a gateway?")
    second = ask(oai, "what is a gateway?")

    assert first.headers["x-metergate-cache"] == "miss"
    assert second.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, CHAT_PATH) == 1
    assert second.parse().model_dump() == first.parse().model_dump()
    assert second.headers["x-metergate-cost-usd"] == "0.00000000"
    original, _ = gw.record(first.headers["x-metergate-record-id"])
    hit, body = gw.record(second.headers["x-metergate-record-id"])
    assert (hit.is_cached, hit.status, hit.cost_usd) == (True, 200, Decimal(0))
    assert original.cost_usd > 0 and not original.is_cached
    assert hit.cache_saved_usd == original.cost_usd
    assert (hit.prompt_tokens, hit.completion_tokens) == (
        original.prompt_tokens,
        original.completion_tokens,
    )
    assert body is not None and body.response_body is not None
    assert first.parse().id in body.response_body


def test_anthropic_repeated_call_is_a_hit(
    gw: ProxyServer, control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    first = ask_claude(claude, "hello there", system="Be brief.")
    second = ask_claude(claude, "hello there", system="Be brief.")

    assert [first.headers["x-metergate-cache"], second.headers["x-metergate-cache"]] == [
        "miss",
        "hit",
    ]
    assert upstream_calls(control, MESSAGES_PATH) == 1
    assert second.parse() == first.parse()
    hit, _ = gw.record(second.headers["x-metergate-record-id"])
    assert hit.is_cached and hit.cost_usd == 0 and hit.cache_saved_usd > 0


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.9},
        {"max_tokens": 50},
        {"seed": 7},
        {"tools": [WEATHER_TOOL]},
        {"response_format": {"type": "json_object"}},
    ],
)
def test_a_field_that_changes_the_answer_is_a_miss(
    control: httpx.Client, oai: openai.OpenAI, change: dict[str, Any]
) -> None:
    ask(oai, "same words")
    other = ask(oai, "same words", **change)

    assert other.headers["x-metergate-cache"] == "miss"
    assert upstream_calls(control, CHAT_PATH) == 2


def test_end_user_field_does_not_split_the_cache(control: httpx.Client, oai: openai.OpenAI) -> None:
    ask(oai, "shared answer", user="alice")
    again = ask(oai, "shared answer", user="bob")

    assert again.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, CHAT_PATH) == 1


def test_same_request_from_two_tenants_is_never_shared(
    gw: ProxyServer, control: httpx.Client, oai: openai.OpenAI
) -> None:
    other = seed_accounts(gw.state.engine, limits=Limits(cache_ttl_seconds=60))
    theirs_client = oai.with_options(api_key=other.key)
    ask(oai, "tenant secret question")
    theirs = ask(theirs_client, "tenant secret question")
    ours_again = ask(oai, "tenant secret question")

    assert theirs.headers["x-metergate-cache"] == "miss"
    assert ours_again.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, CHAT_PATH) == 2


def test_tier_without_cache_ttl_never_caches(
    gw: ProxyServer, control: httpx.Client, oai: openai.OpenAI
) -> None:
    uncached = oai.with_options(api_key=seed_accounts(gw.state.engine).key)
    heads = [ask(uncached, "no cache here").headers["x-metergate-cache"] for _ in range(2)]

    assert heads == ["miss", "miss"]
    assert upstream_calls(control, CHAT_PATH) == 2


# -- stream <-> whole-answer replay ------------------------------------------------------------


def test_openai_whole_answer_replays_as_a_stream(
    gw: ProxyServer, control: httpx.Client, oai: openai.OpenAI
) -> None:
    original = ask(oai, "stream me later").parse()

    stream = oai.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": "stream me later"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert stream.response.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, CHAT_PATH) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == original.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage == original.usage
    assert {c.id for c in chunks} == {original.id}
    record, _ = gw.record(stream.response.headers["x-metergate-record-id"])
    assert record.is_cached and record.is_stream


def test_openai_replayed_stream_has_no_usage_chunk_unless_asked(oai: openai.OpenAI) -> None:
    ask(oai, "no usage please")

    chunks = list(
        oai.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "no usage please"}], stream=True
        )
    )

    assert all(c.choices and c.usage is None for c in chunks)


def test_openai_tool_call_replays_as_a_stream_the_sdk_assembles(
    control: httpx.Client, oai: openai.OpenAI
) -> None:
    messages = [{"role": "user", "content": "weather in Oslo?"}]
    original = oai.chat.completions.create(model=GPT, messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]

    with oai.chat.completions.stream(
        model=GPT,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_completion()

    assert upstream_calls(control, CHAT_PATH) == 1
    (call,) = final.choices[0].message.tool_calls or []
    (expected,) = original.choices[0].message.tool_calls or []
    assert call.id == expected.id
    assert call.function.name == expected.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == expected.function.arguments  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == original.choices[0].finish_reason == "tool_calls"


def test_openai_stream_is_replayed_as_a_whole_answer(
    control: httpx.Client, oai: openai.OpenAI
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=GPT,
            messages=[{"role": "user", "content": "streamed first"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    raw = ask(oai, "streamed first")
    whole = raw.parse()

    assert raw.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, CHAT_PATH) == 1
    assert whole.object == "chat.completion" and whole.id == chunks[0].id
    assert whole.choices[0].message.content == streamed_text
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage == chunks[-1].usage


def test_anthropic_whole_answer_replays_as_a_stream(
    gw: ProxyServer, control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    original = ask_claude(claude, "tell me about rivers").parse()

    with claude.messages.stream(
        model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": "tell me about rivers"}]
    ) as stream:
        final = stream.get_final_message()
        headers = stream.response.headers

    assert headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, MESSAGES_PATH) == 1
    assert final.model_dump(exclude_none=True) == original.model_dump(exclude_none=True)
    record, _ = gw.record(headers["x-metergate-record-id"])
    assert record.is_cached and record.is_stream and record.cost_usd == 0


def test_anthropic_tool_use_replays_as_a_stream(
    control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    messages: Any = [{"role": "user", "content": "weather in Oslo?"}]
    tools: Any = [CLAUDE_WEATHER_TOOL]
    original = claude.messages.create(model=CLAUDE, max_tokens=300, messages=messages, tools=tools)

    with claude.messages.stream(
        model=CLAUDE, max_tokens=300, messages=messages, tools=tools
    ) as stream:
        final = stream.get_final_message()

    assert upstream_calls(control, MESSAGES_PATH) == 1
    assert original.content[0].type == "tool_use" and original.stop_reason == "tool_use"
    assert final.model_dump(exclude_none=True) == original.model_dump(exclude_none=True)


def test_anthropic_stream_is_replayed_as_a_whole_answer(
    control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(
        model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": "stream, then not"}]
    ) as stream:
        streamed = stream.get_final_message()

    raw = ask_claude(claude, "stream, then not")

    assert raw.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(control, MESSAGES_PATH) == 1
    assert raw.parse().model_dump(exclude_none=True) == streamed.model_dump(exclude_none=True)


# -- Cache-Control and TTL ------------------------------------------------------------------


def test_no_cache_skips_the_lookup_but_stores_the_fresh_answer(
    control: httpx.Client, oai: openai.OpenAI
) -> None:
    ask(oai, "fresh please")
    fresh = ask(oai, "fresh please", extra_headers={"Cache-Control": "no-cache"})
    later = ask(oai, "fresh please")

    assert fresh.headers["x-metergate-cache"] == "miss"
    assert later.headers["x-metergate-cache"] == "hit"
    assert later.parse().id == fresh.parse().id
    assert upstream_calls(control, CHAT_PATH) == 2


def test_no_store_bypasses_lookup_and_store(control: httpx.Client, oai: openai.OpenAI) -> None:
    first = ask(oai, "private", extra_headers={"Cache-Control": "no-store"})
    second = ask(oai, "private")
    third = ask(oai, "private", extra_headers={"Cache-Control": "no-store"})
    fourth = ask(oai, "private")

    heads = [r.headers["x-metergate-cache"] for r in (first, second, third, fourth)]
    assert heads == ["miss", "miss", "miss", "hit"]
    assert fourth.parse().id == second.parse().id
    assert upstream_calls(control, CHAT_PATH) == 3


def _tenant_id(gw: ProxyServer, acct: Accounts) -> int:
    with Session(gw.state.engine) as session:
        return int(session.scalar(select(Tenant.id).where(Tenant.name == acct.tenant)) or 0)


@pytest.mark.parametrize("gw", ["redis"], indirect=True)
@pytest.mark.parametrize(("header", "expected_ms"), [("7", 7_000), ("999999", 86_400_000)])
def test_ttl_header_sets_the_redis_expiry_capped_by_the_setting(
    gw: ProxyServer,
    cache_redis: redis.Redis,
    http: httpx.Client,
    acct: Accounts,
    header: str,
    expected_ms: int,
) -> None:
    body = {"model": GPT, "messages": [{"role": "user", "content": f"ttl {header}"}]}
    response = http.post(
        "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {acct.key}", "x-metergate-cache-ttl": header},
    )

    assert response.status_code == 200
    key = cache_key(_tenant_id(gw, acct), "chat.completions", GPT, body, None)
    pttl = cache_redis.pttl(entry_key(key))
    assert expected_ms - 5_000 < pttl <= expected_ms


def test_entry_expires_after_its_ttl(control: httpx.Client, oai: openai.OpenAI) -> None:
    one_second = {"x-metergate-cache-ttl": "1"}
    ask(oai, "short lived", extra_headers=one_second)
    assert ask(oai, "short lived").headers["x-metergate-cache"] == "hit"

    wait_for(
        lambda: ask(oai, "short lived").headers["x-metergate-cache"] == "miss",
        timeout=5,
        interval=0.1,
    )
    assert upstream_calls(control, CHAT_PATH) == 2


def test_malformed_ttl_header_is_refused(http: httpx.Client, acct: Accounts) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": GPT, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {acct.key}", "x-metergate-cache-ttl": "soon"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cache_ttl"


# -- single flight ---------------------------------------------------------------------------


def _concurrently(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        return call(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_identical_misses_make_one_upstream_call(
    control: httpx.Client, oai: openai.OpenAI
) -> None:
    control.post("/_sim/config", json={"latency_ms": 300}).raise_for_status()
    messages: Any = [{"role": "user", "content": "everyone asks this"}]

    def call(index: int) -> tuple[str, str]:
        if index % 2:  # half stream, half not: both forms share one flight
            stream = oai.chat.completions.create(model=GPT, messages=messages, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return stream.response.headers["x-metergate-cache"], text
        raw = oai.chat.completions.with_raw_response.create(model=GPT, messages=messages)
        return raw.headers["x-metergate-cache"], raw.parse().choices[0].message.content or ""

    results = _concurrently(8, call)

    assert upstream_calls(control, CHAT_PATH) == 1
    assert sorted(head for head, _ in results) == ["hit"] * 7 + ["miss"]
    assert len({text for _, text in results}) == 1


def test_waiters_fall_through_when_the_leader_fails(
    control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    control.post("/_sim/config", json={"latency_ms": 300}).raise_for_status()
    control.post(
        "/_sim/faults", json={"fault": "500", "count": 1, "path": MESSAGES_PATH}
    ).raise_for_status()

    def call(index: int) -> int:
        try:
            ask_claude(claude, "the leader fails")
        except anthropic.APIStatusError as error:
            return error.status_code
        return 200

    statuses = _concurrently(4, call)

    assert sorted(statuses) == [200, 200, 200, 502]
    assert upstream_calls(control, MESSAGES_PATH) == 4


# -- provider-side prompt caching ------------------------------------------------------------


def _marking_tier(gw: ProxyServer) -> Accounts:
    acct = seed_accounts(gw.state.engine)  # no response cache: every call goes upstream
    with transaction(gw.state.engine) as session:
        accounts.update_tier(session, acct.tier, Limits(), TierPolicy(is_prompt_cache_marked=True))
    return acct


def test_long_system_prompt_is_marked_and_cache_reads_are_recorded_as_savings(
    gw: ProxyServer, control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    acct = _marking_tier(gw)
    client = claude.with_options(api_key=acct.key)
    first = ask_claude(client, "first question", system=LONG_SYSTEM)
    upstream_system = last_upstream_body(control)["system"]
    second = ask_claude(client, "second question", system=LONG_SYSTEM)

    assert upstream_system == [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    written, _ = gw.record(first.headers["x-metergate-record-id"])
    read, _ = gw.record(second.headers["x-metergate-record-id"])
    assert written.cache_write_tokens > 0 and written.cache_saved_usd == 0
    assert read.cache_read_tokens == written.cache_write_tokens
    # claude-haiku-4-5: input $1.00, cache read $0.10 per million tokens
    expected = Decimal(read.cache_read_tokens) * Decimal("0.90") / 1_000_000
    assert read.cache_saved_usd == expected.quantize(Decimal("0.00000001"))
    assert not read.is_cached


@pytest.mark.parametrize(
    "request_options",
    [
        {"system": "Short and sweet."},
        {"system": [{"type": "text", "text": LONG_SYSTEM}], "metadata": {"user_id": "u1"}},
    ],
    ids=["short-system", "client-marked-message"],
)
def test_system_prompt_left_alone_when_short_or_client_set_breakpoints(
    gw: ProxyServer,
    control: httpx.Client,
    claude: anthropic.Anthropic,
    request_options: dict[str, Any],
) -> None:
    acct = _marking_tier(gw)
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    if isinstance(request_options["system"], list):
        messages[0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    client = claude.with_options(api_key=acct.key)
    client.messages.create(model=CLAUDE, max_tokens=50, messages=messages, **request_options)

    sent = last_upstream_body(control)
    assert sent["system"] == request_options["system"]
    assert sent["messages"] == messages


def test_tier_without_marking_sends_the_system_prompt_unchanged(
    control: httpx.Client, claude: anthropic.Anthropic
) -> None:
    ask_claude(claude, "unmarked", system=LONG_SYSTEM)

    assert last_upstream_body(control)["system"] == LONG_SYSTEM
