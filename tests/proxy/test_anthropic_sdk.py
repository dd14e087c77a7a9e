"""The official anthropic SDK against the proxy, on PostgreSQL and SQLite, upstream simulated."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2

from shared.catalogue import SEED_MODELS, ModelEntry
from shared.pricing import COST_QUANTUM, format_usd
from tests.proxy.recorded import only_record
from tests.support import PROVIDER_ANTHROPIC_KEY, Accounts, ProxyServer, seed_accounts

if TYPE_CHECKING:
    from tests.proxy.conftest import AnthropicFactory, SimControl

MODEL = "claude-haiku-4-5"
CATALOGUE = {entry.name: entry for entry in SEED_MODELS}
HELLO: Any = [{"role": "user", "content": "Say hello to the gateway."}]
LOOKUP_TOOL: Any = {
    "name": "lookup_order",
    "description": "Find an order by its number.",
    "input_schema": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}},
        "required": ["order_id"],
    },
}


def expected_cost(entry: ModelEntry, usage: anthropic.types.Usage) -> Decimal:
    """Anthropic's bill: input_tokens excludes cache reads and writes, each at its own rate."""
    read = usage.cache_read_input_tokens or 0
    write = usage.cache_creation_input_tokens or 0
    total = (
        usage.input_tokens * entry.input_per_mtok
        + read * entry.cached_input_per_mtok
        + write * entry.cache_write_per_mtok
        + usage.output_tokens * entry.output_per_mtok
    ) / Decimal(1_000_000)
    return total.quantize(COST_QUANTUM)


def without_ids(value: Any) -> Any:
    """An event or message as plain data, its random ids blanked."""
    text = json.dumps(value, sort_keys=True)
    return json.loads(re.sub(r'"id": "[^"]*"', '"id": "<id>"', text))


def test_sync_message_is_answered_and_recorded_with_identity_tokens_and_exact_cost(
    proxy: ProxyServer, claude: anthropic.Anthropic, owner: tuple[int, int, int]
) -> None:
    before = proxy.record_count()
    raw = claude.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=200,
        messages=HELLO,
        metadata={"user_id": "customer-9"},
        extra_headers={"x-metergate-session-id": "chat-session-1"},
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text

    record, body = only_record(proxy, raw.headers["x-request-id"])
    assert proxy.record_count() == before + 1
    cost = expected_cost(CATALOGUE[MODEL], message.usage)
    assert cost > 0 and record.cost_usd == cost
    assert raw.headers["x-metergate-cost-usd"] == format_usd(cost)
    assert (record.tenant_id, record.user_id, record.key_id) == owner
    assert (record.dialect, record.endpoint, record.status) == ("anthropic", "messages", 200)
    assert (record.model, record.provider) == (MODEL, "anthropic")
    assert record.prompt_tokens == message.usage.input_tokens
    assert record.completion_tokens == message.usage.output_tokens
    assert record.session_id == "chat-session-1"
    assert record.end_user == "customer-9"
    assert record.latency_ms > 0 and record.upstream_latency_ms and record.upstream_latency_ms > 0
    assert record.client_ip == "127.0.0.1"
    assert record.user_agent and record.user_agent.startswith("Anthropic/Python")
    assert body is not None and body.request_body and body.response_body
    assert json.loads(body.request_body)["metadata"] == {"user_id": "customer-9"}
    assert json.loads(body.response_body)["id"] == message.id


def test_bearer_authorization_works_on_the_messages_route(
    new_anthropic: AnthropicFactory, acct: Accounts
) -> None:
    with new_anthropic(None, auth_token=acct.key) as client:
        message = client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    assert message.stop_reason in ("end_turn", "max_tokens")


def test_async_client_calls_concurrently_each_get_one_record(
    proxy: ProxyServer, acct: Accounts, new_async_anthropic: Callable[..., anthropic.AsyncAnthropic]
) -> None:
    async def call(client: anthropic.AsyncAnthropic, n: int) -> tuple[str, Any]:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": f"question {n}"}]
        )
        return raw.headers["x-request-id"], await raw.parse()

    async def call_three() -> list[tuple[str, Any]]:
        async with new_async_anthropic(acct.key) as client:
            return list(await asyncio.gather(*(call(client, n) for n in range(3))))

    before = proxy.record_count()
    answers = asyncio.run(call_three())
    assert proxy.record_count() == before + 3
    for request_id, message in answers:
        record, _ = only_record(proxy, request_id)
        assert record.completion_tokens == message.usage.output_tokens
        assert record.key_id == acct.key_id


def test_async_stream_is_recorded(
    proxy: ProxyServer, acct: Accounts, new_async_anthropic: Callable[..., anthropic.AsyncAnthropic]
) -> None:
    async def stream_once() -> tuple[str, anthropic.types.Message]:
        async with new_async_anthropic(acct.key) as client:
            async with client.messages.stream(
                model=MODEL,
                max_tokens=100,
                messages=HELLO,
                extra_headers={
                    "x-request-id": request_id,
                    "x-metergate-end-user": "header-user",
                    "x-metergate-session-id": "async-session",
                },
            ) as stream:
                return await stream.get_final_text(), await stream.get_final_message()

    request_id = f"async-stream-{uuid.uuid4()}"
    text, message = asyncio.run(stream_once())
    assert text
    record, _ = only_record(proxy, request_id)
    assert record.is_stream and record.status == 200
    assert record.completion_tokens == message.usage.output_tokens
    assert (record.end_user, record.session_id) == ("header-user", "async-session")


def test_messages_stream_helper_yields_the_text_and_the_record_holds_the_assembled_message(
    proxy: ProxyServer, claude: anthropic.Anthropic
) -> None:
    before = proxy.record_count()
    with claude.messages.stream(model=MODEL, max_tokens=200, messages=HELLO) as stream:
        request_id = stream.response.headers["x-request-id"]
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text and message.content[0].type == "text" and message.content[0].text == text

    record, body = only_record(proxy, request_id)
    assert proxy.record_count() == before + 1
    assert record.is_stream and record.status == 200
    assert record.prompt_tokens == message.usage.input_tokens
    assert record.completion_tokens == message.usage.output_tokens
    assert record.cost_usd == expected_cost(CATALOGUE[MODEL], message.usage)
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert body is not None and body.response_body
    assembled = json.loads(body.response_body)
    assert assembled["id"] == message.id
    assert assembled["content"] == [{"type": "text", "text": text}]
    assert assembled["stop_reason"] == message.stop_reason
    assert assembled["usage"]["output_tokens"] == message.usage.output_tokens


def test_raw_stream_events_are_identical_in_sequence_to_the_simulators(
    claude: anthropic.Anthropic, new_anthropic: AnthropicFactory, sim: SimControl
) -> None:
    with new_anthropic("sk-direct", base_url=sim.base_url) as direct:
        expected = list(
            direct.messages.create(model=MODEL, max_tokens=120, messages=HELLO, stream=True)
        )
    proxied = list(claude.messages.create(model=MODEL, max_tokens=120, messages=HELLO, stream=True))
    assert [event.type for event in proxied] == [event.type for event in expected]
    assert [event.type for event in proxied][:2] == ["message_start", "content_block_start"]
    assert [without_ids(e.to_dict()) for e in proxied] == [
        without_ids(e.to_dict()) for e in expected
    ]


def test_raw_stream_bytes_equal_the_simulators_apart_from_ids(
    http: httpx2.Client, acct: Accounts, sim: SimControl
) -> None:
    body = {"model": MODEL, "max_tokens": 80, "messages": HELLO, "stream": True}
    headers = {"anthropic-version": "2023-06-01"}
    direct = sim.http.post("/v1/messages", json=body, headers=headers)
    proxied = http.post("/v1/messages", json=body, headers={**headers, "x-api-key": acct.key})
    assert proxied.status_code == direct.status_code == 200
    blank = re.compile(rb'"id":"[^"]*"')
    assert blank.sub(b"", proxied.content) == blank.sub(b"", direct.content)


def test_streamed_tool_use_is_assembled_into_the_record(
    proxy: ProxyServer, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=300,
        messages=[{"role": "user", "content": "Where is order 1234?"}],
        tools=[LOOKUP_TOOL],
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        message = stream.get_final_message()
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "lookup_order"

    _, body = only_record(proxy, request_id)
    assert body is not None and body.response_body
    recorded = json.loads(body.response_body)["content"][0]
    assert recorded == {
        "type": "tool_use",
        "id": block.id,
        "name": block.name,
        "input": block.input,
    }


def test_prompt_cache_write_then_read_are_recorded_and_priced_at_the_cache_rates(
    proxy: ProxyServer, claude: anthropic.Anthropic, sim: SimControl
) -> None:
    policy = " ".join(f"Policy clause {n}: refunds within thirty days." for n in range(300))
    system: Any = [
        {
            "type": "text",
            "text": f"{uuid.uuid4()} {policy}",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    entry = CATALOGUE[MODEL]
    records = []
    for _ in range(2):
        raw = claude.messages.with_raw_response.create(
            model=MODEL, max_tokens=100, system=system, messages=HELLO
        )
        message = raw.parse()
        record, _ = only_record(proxy, raw.headers["x-request-id"])
        assert record.cost_usd == expected_cost(entry, message.usage)
        assert raw.headers["x-metergate-cost-usd"] == format_usd(record.cost_usd)
        records.append((record, message.usage))

    (first, first_usage), (second, second_usage) = records
    assert first.cache_write_tokens == first_usage.cache_creation_input_tokens
    assert first.cache_write_tokens >= 1024 and first.cache_read_tokens == 0
    assert second.cache_read_tokens == second_usage.cache_read_input_tokens
    assert second.cache_read_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
    assert (
        first.prompt_tokens
        == second.prompt_tokens
        == (first_usage.input_tokens + first.cache_write_tokens)
    )
    assert second.cost_usd < first.cost_usd


def test_version_and_beta_headers_reach_upstream_but_the_clients_x_api_key_never_does(
    new_anthropic: AnthropicFactory, acct: Accounts, sim: SimControl
) -> None:
    beta = "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
    # The key as x-api-key (as curl and older SDKs send it), and an older API version than
    # the SDKs' default: the client's choice must win upstream.
    with new_anthropic(None, default_headers={"x-api-key": acct.key}) as client:
        client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=HELLO,
            extra_headers={"anthropic-beta": beta, "anthropic-version": "2023-06-01"},
        )
    upstream = sim.last_request()
    headers = upstream["headers"]
    assert upstream["path"] == "/v1/messages"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == beta
    credentials = {headers.get("x-api-key"), headers.get("authorization")} - {None}
    assert credentials <= {PROVIDER_ANTHROPIC_KEY, f"Bearer {PROVIDER_ANTHROPIC_KEY}"}
    assert credentials, "the provider key did not reach upstream"
    assert acct.key not in json.dumps(upstream)


def test_unknown_request_fields_reach_upstream_unchanged(
    claude: anthropic.Anthropic, sim: SimControl
) -> None:
    extra = {"metergate_probe": {"list": [1, 2, {"deep": True}]}, "top_k": 7, "temperature": 0.5}
    claude.messages.create(model=MODEL, max_tokens=50, messages=HELLO, extra_body=extra)
    upstream = sim.last_request()
    assert upstream["body"]["metergate_probe"] == extra["metergate_probe"]
    assert upstream["body"]["top_k"] == 7
    assert upstream["body"]["temperature"] == 0.5
    assert upstream["body"]["messages"] == HELLO


def test_models_list_is_in_anthropic_shape_and_limited_to_the_allow_list(
    proxy: ProxyServer, new_anthropic: AnthropicFactory
) -> None:
    allowed = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    limited = seed_accounts(proxy.state.engine, key_models=allowed)
    with new_anthropic(limited.key) as client:
        raw = client.models.with_raw_response.list()
    page = raw.parse()
    assert [model.id for model in page.data] == sorted(allowed)
    assert all(model.type == "model" and model.display_name for model in page.data)
    body = json.loads(raw.http_response.content)
    assert body["has_more"] is False
    assert (body["first_id"], body["last_id"]) == (sorted(allowed)[0], sorted(allowed)[-1])
    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert (record.dialect, record.status) == ("anthropic", 200)
