"""The cache's pure parts: its key, its TTL and Cache-Control policy, its entries; prompt marks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.cache import (
    TTL_HEADER,
    CacheEntry,
    CacheTicket,
    ResponseCache,
    cache_key,
    requested_ttl,
)
from proxy.cache_store import MemoryCacheStore, RedisCacheStore
from proxy.errors import InvalidRequest
from proxy.prompt_cache import EPHEMERAL, mark_system_prompt
from shared.catalogue import SEED_MODELS
from shared.pricing import Usage, price_prompt_cache_savings

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
}
LONG_SYSTEM = "You are a careful assistant. " * 200  # ~5800 bytes: ~1940 estimated tokens


def key_of(body: dict[str, Any], tenant: int = 1, beta: str | None = None) -> str:
    return cache_key(tenant, "chat.completions", "gpt-4o-mini", body, beta)


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "end-user-42"},
        {"safety_identifier": "abc"},
        {"metadata": {"user_id": "u-1"}},
    ],
)
def test_key_ignores_fields_that_do_not_change_the_answer(extra: dict[str, Any]) -> None:
    assert key_of({**BODY, **extra}) == key_of(BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"temperature": 0.3},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"seed": 1},
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"system": "be terse"},
        {"metadata": {"user_id": "u-1", "topic": "x"}},
    ],
)
def test_key_changes_with_every_field_that_changes_the_answer(change: dict[str, Any]) -> None:
    assert key_of({**BODY, **change}) != key_of(BODY)


def test_key_differs_per_tenant_endpoint_upstream_model_and_beta_header() -> None:
    base = key_of(BODY)
    assert key_of(BODY, tenant=2) != base
    assert cache_key(1, "messages", "gpt-4o-mini", BODY, None) != base
    assert cache_key(1, "chat.completions", "gpt-4o-2024", BODY, None) != base
    assert key_of(BODY, beta="prompt-caching-2024-07-31") != base


def test_key_does_not_depend_on_field_order() -> None:
    assert key_of(dict(reversed(list(BODY.items())))) == key_of(BODY)


@pytest.mark.parametrize(
    ("header", "tier_ttl", "expected"),
    [
        (None, 60, 60),
        (None, 10**9, 86400),
        ("5", 60, 5),
        (" 120 ", 60, 120),
        ("0", 60, 0),
        ("999999", 60, 86400),
    ],
)
def test_requested_ttl(header: str | None, tier_ttl: int, expected: int) -> None:
    headers = {} if header is None else {TTL_HEADER: header}
    assert requested_ttl(headers, tier_ttl, 86400) == expected


@pytest.mark.parametrize("header", ["-1", "soon", "1.5", ""])
def test_requested_ttl_refuses_what_is_not_whole_seconds(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        requested_ttl({TTL_HEADER: header}, 60, 86400)
    assert caught.value.code == "invalid_cache_ttl"


def plan(tier_ttl: int | None, headers: dict[str, str], endpoint: str = "chat.completions") -> Any:
    cache = ResponseCache(MemoryCacheStore(1 << 20), max_ttl_seconds=3600, lock_wait_seconds=1)
    return cache.plan(
        tenant_id=1,
        tier_ttl_seconds=tier_ttl,
        endpoint=endpoint,
        upstream_model="gpt-4o-mini",
        body=BODY,
        headers=headers,
    )


@pytest.mark.parametrize(
    ("tier_ttl", "headers", "endpoint", "expected"),
    [
        (60, {}, "chat.completions", (60, True)),
        (None, {}, "chat.completions", None),
        (0, {TTL_HEADER: "30"}, "chat.completions", None),
        (60, {"cache-control": "no-cache"}, "chat.completions", (60, False)),
        (60, {"cache-control": "max-age=0, No-Store"}, "chat.completions", None),
        (60, {TTL_HEADER: "0"}, "messages", (0, True)),
        (60, {}, "embeddings", (60, True)),
        (60, {}, "messages.count_tokens", None),
    ],
)
def test_plan_follows_tier_headers_and_endpoint(
    tier_ttl: int | None, headers: dict[str, str], endpoint: str, expected: Any
) -> None:
    ticket = plan(tier_ttl, headers, endpoint)
    assert (None if ticket is None else (ticket.ttl_seconds, ticket.is_lookup)) == expected


def test_lookup_after_settle_returns_the_stored_entry() -> None:
    cache = ResponseCache(MemoryCacheStore(1 << 20), max_ttl_seconds=60, lock_wait_seconds=1)
    ticket = cache.plan(
        tenant_id=1,
        tier_ttl_seconds=60,
        endpoint="messages",
        upstream_model="m",
        body=BODY,
        headers={},
    )
    assert ticket is not None and cache.lookup(ticket) is None
    entry = CacheEntry({"id": "msg_1"}, Usage(10, 2), Decimal("0.001"), "m")
    cache.settle(ticket, entry)
    cache.settle(ticket, None)  # a second settle is a no-op

    again = cache.plan(
        tenant_id=1,
        tier_ttl_seconds=60,
        endpoint="messages",
        upstream_model="m",
        body=BODY,
        headers={},
    )
    assert again is not None and cache.lookup(again) == entry


def test_entry_survives_bytes_and_rejects_garbage() -> None:
    entry = CacheEntry({"id": "x", "choices": []}, Usage(5, 7, 1, 2), Decimal("0.00012345"), "m")
    assert CacheEntry.from_bytes(entry.to_bytes()) == entry
    assert CacheEntry.from_bytes(b"not json") is None
    assert CacheEntry.from_bytes(b'{"body": {}}') is None


# -- marking system prompts for Anthropic's prompt cache ---------------------------------------


def test_long_string_system_prompt_becomes_a_marked_block() -> None:
    body = {"model": "c", "system": LONG_SYSTEM, "messages": []}
    marked = mark_system_prompt("messages", body)
    assert marked["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": EPHEMERAL}]
    assert body["system"] == LONG_SYSTEM  # the caller's body is untouched


def test_last_block_of_a_long_system_list_is_marked() -> None:
    system = [{"type": "text", "text": LONG_SYSTEM}, {"type": "text", "text": "Today is Monday."}]
    marked = mark_system_prompt("messages", {"system": system, "messages": []})
    assert marked["system"] == [system[0], {**system[1], "cache_control": EPHEMERAL}]
    assert "cache_control" not in system[1]


@pytest.mark.parametrize(
    "body",
    [
        {"system": "short", "messages": []},
        {"messages": []},
        {
            "system": LONG_SYSTEM,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {}}]}
            ],
        },
        {"system": LONG_SYSTEM, "tools": [{"name": "t", "cache_control": EPHEMERAL}]},
    ],
    ids=["short", "no-system", "client-breakpoint-in-messages", "client-breakpoint-in-tools"],
)
def test_system_prompt_is_left_alone(body: dict[str, Any]) -> None:
    assert mark_system_prompt("messages", body) is body


def test_only_the_messages_endpoint_is_marked() -> None:
    body = {"system": LONG_SYSTEM, "messages": []}
    assert mark_system_prompt("chat.completions", body) is body


def test_prompt_cache_savings_are_cache_reads_at_the_input_discount() -> None:
    haiku = next(model for model in SEED_MODELS if model.name == "claude-haiku-4-5")
    usage = Usage(prompt_tokens=3000, completion_tokens=10, cache_read_tokens=2000)
    assert price_prompt_cache_savings(usage, haiku) == Decimal("0.00180000")
    assert price_prompt_cache_savings(Usage(100, 10), haiku) == 0


def test_an_unreachable_store_is_a_miss_and_never_fails_the_call() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cache = ResponseCache(RedisCacheStore(dead), max_ttl_seconds=60, lock_wait_seconds=1)
    ticket = CacheTicket(key="k", ttl_seconds=60, is_lookup=True, claim_token="t")

    assert cache.lookup(ticket) is None
    cache.settle(ticket, CacheEntry({}, Usage(), Decimal(0), "m"))
    assert ticket.is_settled and ticket.claim_token is None
    dead.close()
