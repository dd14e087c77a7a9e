"""The official openai SDK against the proxy, on PostgreSQL and SQLite, upstream simulated."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest

from shared.catalogue import SEED_MODELS, ModelEntry
from shared.pricing import COST_QUANTUM, format_usd

if TYPE_CHECKING:
    from tests.proxy.conftest import OpenAIFactory, SimControl
from tests.proxy.recorded import only_record
from tests.support import PROVIDER_OPENAI_KEY, Accounts, ProxyServer, seed_accounts

MODEL = "gpt-4o-mini"
CATALOGUE = {entry.name: entry for entry in SEED_MODELS}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def expected_cost(entry: ModelEntry, prompt: int, completion: int, cached: int = 0) -> Decimal:
    """OpenAI's bill: cached tokens are inside prompt_tokens, billed at the cached rate."""
    total = (
        (prompt - cached) * entry.input_per_mtok
        + cached * entry.cached_input_per_mtok
        + completion * entry.output_per_mtok
    ) / Decimal(1_000_000)
    return total.quantize(COST_QUANTUM)


def normalised(raw: bytes) -> bytes:
    """A body with its random ids and clock values blanked, for byte comparison."""
    raw = re.sub(rb'"id":"[^"]*"', b'"id":"<id>"', raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def test_sync_completion_is_answered_and_recorded_with_identity_tokens_and_exact_cost(
    proxy: ProxyServer, oai: openai.OpenAI, owner: tuple[int, int, int]
) -> None:
    before = proxy.record_count()
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three rivers."}],
        user="end-user-42",
        extra_headers={"x-metergate-session-id": "session-7"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None

    record, body = only_record(proxy, raw.headers["x-request-id"])
    assert proxy.record_count() == before + 1
    cost = expected_cost(
        CATALOGUE[MODEL], completion.usage.prompt_tokens, completion.usage.completion_tokens
    )
    assert cost > 0
    assert raw.headers["x-metergate-cost-usd"] == format_usd(cost)
    assert (record.tenant_id, record.user_id, record.key_id) == owner
    assert (record.dialect, record.endpoint, record.status) == ("openai", "chat.completions", 200)
    assert (record.model, record.provider, record.upstream_model) == (MODEL, "openai", MODEL)
    assert record.prompt_tokens == completion.usage.prompt_tokens
    assert record.completion_tokens == completion.usage.completion_tokens
    assert record.cost_usd == cost
    assert record.session_id == "session-7"
    assert record.end_user == "end-user-42"
    assert record.is_stream is False and record.is_cached is False
    assert record.error_code is None
    assert record.latency_ms > 0 and record.upstream_latency_ms and record.upstream_latency_ms > 0
    assert record.overhead_ms is not None and 0 <= record.overhead_ms <= record.latency_ms
    assert record.overhead_ms + record.upstream_latency_ms == pytest.approx(record.latency_ms)
    assert record.client_ip == "127.0.0.1"
    assert record.user_agent and record.user_agent.startswith("OpenAI/Python")
    assert record.upstream_request_id and record.upstream_request_id != record.id
    uuid.UUID(record.id)
    assert body is not None and body.request_body and body.response_body
    assert json.loads(body.request_body)["user"] == "end-user-42"
    assert json.loads(body.response_body) == json.loads(raw.http_response.content)


def test_end_user_falls_back_to_the_end_user_header(proxy: ProxyServer, oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-metergate-end-user": "header-user"},
    )
    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert record.end_user == "header-user"
    assert record.session_id is None


def test_async_client_calls_concurrently_each_get_one_record(
    proxy: ProxyServer, acct: Accounts, new_async_openai: Callable[..., openai.AsyncOpenAI]
) -> None:
    async def call_three() -> list[Any]:
        async with new_async_openai(acct.key) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.chat.completions.with_raw_response.create(
                            model=MODEL, messages=[{"role": "user", "content": f"question {n}"}]
                        )
                        for n in range(3)
                    )
                )
            )

    before = proxy.record_count()
    answers = asyncio.run(call_three())
    assert proxy.record_count() == before + 3
    for raw in answers:
        completion = raw.parse()
        record, _ = only_record(proxy, raw.headers["x-request-id"])
        assert record.status == 200
        assert record.completion_tokens == completion.usage.completion_tokens
        assert record.key_id == acct.key_id


def test_stream_without_include_usage_hides_usage_from_client_but_prices_the_record(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    messages: Any = [{"role": "user", "content": "Tell me about streams."}]
    with oai.chat.completions.with_streaming_response.create(
        model=MODEL, messages=messages, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    assert b'"usage"' not in raw
    assert raw.endswith(b"data: [DONE]\n\n")

    before = proxy.record_count()
    stream = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, stream=True
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk reached the client"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    record, body = only_record(proxy, request_id)
    assert proxy.record_count() == before + 1
    assert record.is_stream is True and record.status == 200
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd == expected_cost(
        CATALOGUE[MODEL], record.prompt_tokens, record.completion_tokens
    )
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert body is not None and body.response_body
    assembled = json.loads(body.response_body)
    assert assembled["object"] == "chat.completion"
    assert assembled["choices"][0]["message"]["content"] == text
    assert assembled["choices"][0]["finish_reason"] == "stop"
    assert assembled["usage"]["completion_tokens"] == record.completion_tokens


def test_stream_with_include_usage_delivers_the_usage_chunk_matching_the_record(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    stream = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream.parse())
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage is not None

    record, _ = only_record(proxy, stream.headers["x-request-id"])
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert record.cost_usd == expected_cost(
        CATALOGUE[MODEL], usage.prompt_tokens, usage.completion_tokens
    )


def test_tool_call_answer_reaches_the_client_and_the_record(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    _, body = only_record(proxy, raw.headers["x-request-id"])
    assert body is not None and body.response_body
    recorded_call = json.loads(body.response_body)["choices"][0]["message"]["tool_calls"][0]
    assert recorded_call["id"] == call.id


def test_streamed_tool_call_is_assembled_into_the_record(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    stream = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = list(stream.parse())
    arguments = "".join(
        call.function.arguments or ""
        for chunk in chunks
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function is not None
    )
    assert json.loads(arguments)["city"]

    record, body = only_record(proxy, stream.headers["x-request-id"])
    assert record.completion_tokens > 0
    assert body is not None and body.response_body
    choice = json.loads(body.response_body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": arguments,
    }


def test_unknown_request_fields_reach_upstream_unchanged(
    proxy: ProxyServer, oai: openai.OpenAI, sim: SimControl
) -> None:
    extra = {"metergate_probe": {"nested": [1, "two", None, {"x": 3.5}]}, "seed": 1234}
    oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.25,
        extra_body=extra,
    )
    upstream = sim.last_request()
    assert upstream["path"] == "/v1/chat/completions"
    assert upstream["body"]["metergate_probe"] == extra["metergate_probe"]
    assert upstream["body"]["seed"] == 1234
    assert upstream["body"]["temperature"] == 0.25
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_OPENAI_KEY}"


def test_client_key_never_reaches_upstream(
    oai: openai.OpenAI, acct: Accounts, sim: SimControl
) -> None:
    oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    upstream = sim.last_request()
    assert acct.key not in json.dumps(upstream)
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_OPENAI_KEY}"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="whole"),
        pytest.param({"stream": True}, id="stream-without-usage"),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": False}}, id="stream-usage-off"
        ),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True}}, id="stream-with-usage"
        ),
        pytest.param({"tools": [WEATHER_TOOL]}, id="tool-call"),
    ],
)
def test_answer_bytes_equal_the_simulators_apart_from_ids(
    http: httpx2.Client, acct: Accounts, sim: SimControl, extra: dict[str, Any]
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Same question."}], **extra}
    direct = sim.http.post("/v1/chat/completions", json=body)
    proxied = http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {acct.key}"}
    )
    assert proxied.status_code == direct.status_code == 200
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert normalised(proxied.content) == normalised(direct.content)


def test_models_list_shows_only_the_models_the_key_may_use(
    proxy: ProxyServer, new_openai: OpenAIFactory
) -> None:
    allowed = ["gpt-4o-mini", "claude-haiku-4-5"]
    limited = seed_accounts(proxy.state.engine, key_models=allowed)
    with new_openai(limited.key) as client:
        raw = client.models.with_raw_response.list()
    models = raw.parse()
    assert sorted(model.id for model in models.data) == sorted(allowed)
    assert all(model.object == "model" for model in models.data)
    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert (record.status, record.endpoint, record.key_id) == (200, "models", limited.key_id)


def test_models_list_without_allow_list_shows_the_whole_catalogue(oai: openai.OpenAI) -> None:
    names = {model.id for model in oai.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5"} <= names


def test_repeated_long_prompt_is_priced_with_openais_cached_input_rate(
    proxy: ProxyServer, oai: openai.OpenAI, sim: SimControl
) -> None:
    long_system = " ".join(f"rule {n}: answer briefly and politely." for n in range(400))
    messages: Any = [
        {"role": "system", "content": f"{uuid.uuid4()} {long_system}"},
        {"role": "user", "content": "What is the capital of Peru?"},
    ]
    first = oai.chat.completions.create(model=MODEL, messages=messages)
    assert first.usage is not None and first.usage.prompt_tokens >= 1024
    messages.append({"role": "assistant", "content": "Lima."})
    messages.append({"role": "user", "content": "And of Chile?"})
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    second = raw.parse()
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= 1024

    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert record.cache_read_tokens == cached
    assert record.cache_write_tokens == 0
    assert record.prompt_tokens == second.usage.prompt_tokens
    assert record.cost_usd == expected_cost(
        CATALOGUE[MODEL], second.usage.prompt_tokens, second.usage.completion_tokens, cached
    )


def test_x_api_key_header_is_accepted_on_the_openai_route(
    proxy: ProxyServer, http: httpx2.Client, acct: Accounts
) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": acct.key},
    )
    assert response.status_code == 200, response.text
    record, _ = only_record(proxy, response.headers["x-request-id"])
    assert record.key_id == acct.key_id
