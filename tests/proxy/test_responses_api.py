"""The Responses API through the proxy: the real openai SDK, on PostgreSQL and SQLite.

Creates (whole and streamed, sync and async), tool round trips, JSON-schema answers,
the cache (whole <-> stream replay) and the records, costs and ids behind each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest

from shared.accounts import Limits
from shared.catalogue import SEED_MODELS
from shared.pricing import COST_QUANTUM, format_usd
from tests.proxy.recorded import only_record
from tests.support import PROVIDER_OPENAI_KEY, Accounts, ProxyServer, seed_accounts

if TYPE_CHECKING:
    from tests.proxy.conftest import OpenAIFactory, SimControl

MODEL = "gpt-4o-mini"
ENTRY = {entry.name: entry for entry in SEED_MODELS}[MODEL]
RESPONSES_PATH = "/v1/responses"
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CITY_FORMAT: Any = {
    "format": {
        "type": "json_schema",
        "name": "city",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["name", "population"],
            "additionalProperties": False,
        },
        "strict": True,
    }
}


def expected_cost(usage: Any) -> Decimal:
    """OpenAI's bill: cached input tokens at the cached rate, output (reasoning included)."""
    cached = usage.input_tokens_details.cached_tokens
    total = (
        (usage.input_tokens - cached) * ENTRY.input_per_mtok
        + cached * ENTRY.cached_input_per_mtok
        + usage.output_tokens * ENTRY.output_per_mtok
    ) / Decimal(1_000_000)
    return total.quantize(COST_QUANTUM)


def upstream_calls(sim: SimControl, path: str = RESPONSES_PATH) -> int:
    return sum(1 for request in sim.requests(200) if request["path"] == path)


@pytest.fixture()
def cached_oai(proxy: ProxyServer, new_openai: OpenAIFactory) -> openai.OpenAI:
    """The openai SDK with a fresh key whose tier caches answers for a minute."""
    acct = seed_accounts(proxy.state.engine, limits=Limits(cache_ttl_seconds=60))
    return new_openai(acct.key)


# -- create ----------------------------------------------------------------------------------


def test_create_is_answered_priced_and_recorded_with_the_response_id(
    proxy: ProxyServer, oai: openai.OpenAI, owner: tuple[int, int, int]
) -> None:
    raw = oai.responses.with_raw_response.create(
        model=MODEL,
        input="Name three rivers.",
        instructions="Answer briefly.",
        max_output_tokens=200,
        user="end-user-5",
    )
    response = raw.parse()
    assert response.output_text and response.usage is not None

    record, body = only_record(proxy, raw.headers["x-request-id"])
    cost = expected_cost(response.usage)
    assert cost > 0 and record.cost_usd == cost
    assert raw.headers["x-metergate-cost-usd"] == format_usd(cost)
    assert (record.tenant_id, record.user_id, record.key_id) == owner
    assert (record.dialect, record.endpoint, record.status) == ("openai", "responses", 200)
    assert (record.model, record.provider, record.is_stream) == (MODEL, "openai", False)
    assert record.prompt_tokens == response.usage.input_tokens
    assert record.completion_tokens == response.usage.output_tokens
    assert record.response_id == response.id and response.id.startswith("resp_")
    assert record.end_user == "end-user-5"
    assert body is not None and body.response_body and body.request_body
    assert json.loads(body.response_body) == json.loads(raw.http_response.content)
    assert json.loads(body.request_body)["instructions"] == "Answer briefly."


def test_input_items_are_passed_through_unchanged(oai: openai.OpenAI, sim: SimControl) -> None:
    items: Any = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is a river?"}]},
    ]
    oai.responses.create(model=MODEL, input=items, extra_body={"metergate_probe": [1, 2]})

    upstream = sim.last_request()
    assert upstream["path"] == RESPONSES_PATH
    assert upstream["body"]["input"] == items
    assert upstream["body"]["metergate_probe"] == [1, 2]
    assert upstream["headers"]["authorization"] == f"Bearer {PROVIDER_OPENAI_KEY}"


def test_long_follow_up_is_priced_with_cached_input_tokens(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    long_instructions = " ".join(f"rule {n}: answer briefly and politely." for n in range(400))
    first = oai.responses.create(model=MODEL, instructions=long_instructions, input="Peru?")
    raw = oai.responses.with_raw_response.create(
        model=MODEL, previous_response_id=first.id, input="And Chile?"
    )
    second = raw.parse()
    assert second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= 1024

    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert record.cache_read_tokens == cached
    assert record.cost_usd == expected_cost(second.usage)
    assert record.cost_usd < (
        Decimal(second.usage.input_tokens) * ENTRY.input_per_mtok / 1_000_000
        + Decimal(second.usage.output_tokens) * ENTRY.output_per_mtok / 1_000_000
    )


def test_async_create_and_stream_are_recorded(
    proxy: ProxyServer, acct: Accounts, new_async_openai: Callable[..., openai.AsyncOpenAI]
) -> None:
    async def run() -> tuple[Any, Any, str]:
        async with new_async_openai(acct.key) as client:
            whole = await client.responses.with_raw_response.create(model=MODEL, input="async hi")
            async with client.responses.stream(model=MODEL, input="async stream") as stream:
                deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
                text = "".join(deltas)
                final = await stream.get_final_response()
            return whole, final, text

    whole, final, text = asyncio.run(run())

    record, _ = only_record(proxy, whole.headers["x-request-id"])
    assert record.response_id == whole.parse().id and record.status == 200
    assert final.output_text == text and final.status == "completed"
    proxy.flush()
    streamed = _record_by_response_id(proxy, final.id)
    assert streamed.is_stream and streamed.completion_tokens == final.usage.output_tokens
    assert streamed.cost_usd == expected_cost(final.usage)


def _record_by_response_id(proxy: ProxyServer, response_id: str) -> Any:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from shared.models import RequestRecord
    from tests.support import wait_for

    def find() -> Any:
        proxy.flush()
        with Session(proxy.state.engine, expire_on_commit=False) as session:
            return session.scalars(
                select(RequestRecord).where(RequestRecord.response_id == response_id)
            ).first()

    return wait_for(find)


# -- streams ---------------------------------------------------------------------------------


def test_stream_events_pass_through_unchanged_and_the_record_holds_the_final_response(
    proxy: ProxyServer, http: httpx2.Client, acct: Accounts, sim: SimControl
) -> None:
    body = {"model": MODEL, "input": "Tell me about streams.", "stream": True}
    with http.stream(
        "POST", RESPONSES_PATH, json=body, headers={"Authorization": f"Bearer {acct.key}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-metergate-cost-usd"] == "pending"
        raw = b"".join(response.iter_bytes())
        request_id = response.headers["x-request-id"]

    events = [
        json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
    ]
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    final = events[-1]["response"]

    record, stored = only_record(proxy, request_id)
    assert record.is_stream and record.status == 200
    assert record.response_id == final["id"]
    assert record.prompt_tokens == final["usage"]["input_tokens"]
    assert record.completion_tokens == final["usage"]["output_tokens"]
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms
    assert stored is not None and json.loads(stored.response_body or "{}") == final


def test_sync_stream_helper_yields_text_and_the_final_response(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    with oai.responses.stream(model=MODEL, input="Stream a sentence.") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(deltas) == final.output_text
    record = _record_by_response_id(proxy, final.id)
    assert record.is_stream and record.cost_usd == expected_cost(final.usage)


# -- tools and structured output ---------------------------------------------------------------


@pytest.mark.parametrize("is_stream", [False, True], ids=["whole", "stream"])
def test_function_call_round_trip(
    proxy: ProxyServer, oai: openai.OpenAI, sim: SimControl, is_stream: bool
) -> None:
    def ask(**options: Any) -> Any:
        if not is_stream:
            return oai.responses.create(model=MODEL, tools=[WEATHER_TOOL], **options)
        with oai.responses.stream(model=MODEL, tools=[WEATHER_TOOL], **options) as stream:
            return stream.get_final_response()

    first = ask(input="Weather in Oslo?", tool_choice="auto", parallel_tool_calls=False)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    assert sim.last_request()["body"]["tool_choice"] == "auto"
    assert sim.last_request()["body"]["parallel_tool_calls"] is False

    second = ask(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 4}'}],
    )
    assert second.output_text and not any(i.type == "function_call" for i in second.output)

    called = _record_by_response_id(proxy, first.id)
    answered = _record_by_response_id(proxy, second.id)
    assert called.is_stream is is_stream and called.cost_usd == expected_cost(first.usage)
    assert answered.cost_usd == expected_cost(second.usage)
    stored = json.loads(_body_of(proxy, called.id))
    assert stored["output"][0]["type"] == "function_call"
    assert stored["output"][0]["arguments"] == call.arguments


def _body_of(proxy: ProxyServer, record_id: str) -> str:
    _, body = proxy.record(record_id)
    assert body is not None and body.response_body
    return body.response_body


@pytest.mark.parametrize("is_stream", [False, True], ids=["whole", "stream"])
def test_json_schema_answer_is_validated_and_marked_valid(
    proxy: ProxyServer, oai: openai.OpenAI, is_stream: bool
) -> None:
    if is_stream:
        with oai.responses.stream(model=MODEL, input="A city?", text=CITY_FORMAT) as stream:
            final = stream.get_final_response()
        record = _record_by_response_id(proxy, final.id)
    else:
        raw = oai.responses.with_raw_response.create(model=MODEL, input="A city?", text=CITY_FORMAT)
        final = raw.parse()
        assert raw.headers["x-metergate-output-valid"] == "true"
        record, _ = only_record(proxy, raw.headers["x-request-id"])

    document = json.loads(final.output_text)
    assert set(document) == {"name", "population"}
    assert record.output_valid is True


# -- refusals ----------------------------------------------------------------------------------


def test_a_model_of_the_other_provider_is_refused_naming_its_route(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model="claude-haiku-4-5", input="hi")

    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "wrong_route"
    assert "POST /v1/messages" in error["message"] and error["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 42}, "input"),
        ({"input": "hi", "previous_response_id": 7}, "previous_response_id"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "stream": "yes"}, "stream"),
    ],
)
def test_malformed_request_is_refused_naming_the_field(
    http: httpx2.Client, acct: Accounts, body: dict[str, Any], param: str
) -> None:
    response = http.post(
        RESPONSES_PATH,
        json={"model": MODEL, **body},
        headers={"Authorization": f"Bearer {acct.key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# -- cache -------------------------------------------------------------------------------------


def test_repeated_create_is_a_cache_hit_and_replays_as_a_stream(
    proxy: ProxyServer, cached_oai: openai.OpenAI, sim: SimControl
) -> None:
    first = cached_oai.responses.with_raw_response.create(model=MODEL, input="cache me")
    again = cached_oai.responses.with_raw_response.create(model=MODEL, input="cache me")
    stream = cached_oai.responses.create(model=MODEL, input="cache me", stream=True)
    events = list(stream)
    stream_headers = stream.response.headers
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert events[-1].type == "response.completed"
    final = events[-1].response

    original = first.parse()
    assert [first.headers["x-metergate-cache"], again.headers["x-metergate-cache"]] == [
        "miss",
        "hit",
    ]
    assert stream_headers["x-metergate-cache"] == "hit"
    assert upstream_calls(sim) == 1
    assert again.parse().model_dump() == original.model_dump()
    assert final.model_dump() == original.model_dump()
    assert "".join(deltas) == original.output_text
    hit, _ = only_record(proxy, again.headers["x-request-id"])
    replayed, _ = only_record(proxy, stream_headers["x-request-id"])
    source, _ = only_record(proxy, first.headers["x-request-id"])
    for record in (hit, replayed):
        assert record.is_cached and record.cost_usd == 0
        assert record.cache_saved_usd == source.cost_usd > 0
        assert record.response_id == original.id
    assert replayed.is_stream


def test_stream_is_cached_and_replayed_as_a_whole_answer(
    cached_oai: openai.OpenAI, sim: SimControl
) -> None:
    with cached_oai.responses.stream(model=MODEL, input="stream then whole") as stream:
        streamed = stream.get_final_response()

    raw = cached_oai.responses.with_raw_response.create(model=MODEL, input="stream then whole")

    assert raw.headers["x-metergate-cache"] == "hit"
    assert upstream_calls(sim) == 1
    # The helper's parsed snapshot adds "parsed": None to text parts.
    assert raw.parse().model_dump(exclude_none=True) == streamed.model_dump(exclude_none=True)


def test_function_call_is_cached_with_the_tools_in_the_key(
    cached_oai: openai.OpenAI, sim: SimControl
) -> None:
    cached_oai.responses.create(model=MODEL, input="Weather in Rome?", tools=[WEATHER_TOOL])
    with cached_oai.responses.stream(
        model=MODEL, input="Weather in Rome?", tools=[WEATHER_TOOL]
    ) as stream:
        replayed = stream.get_final_response()
    other = cached_oai.responses.with_raw_response.create(model=MODEL, input="Weather in Rome?")

    assert upstream_calls(sim) == 2
    assert replayed.output[0].type == "function_call"
    assert other.headers["x-metergate-cache"] == "miss"


def test_truncated_stream_raises_in_the_sdk_and_records_the_partial_response(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    request_id = f"truncated-{uuid.uuid4()}"
    kinds: list[str] = []
    with pytest.raises(openai.APIError):
        for event in oai.responses.create(
            model=MODEL,
            input="Tell me a long story.",
            stream=True,
            extra_body={"sim_fault": "truncate"},
            extra_headers={"x-request-id": request_id},
        ):
            kinds.append(event.type)

    assert kinds[0] == "response.created" and "response.completed" not in kinds
    record, stored = only_record(proxy, request_id)
    assert (record.status, record.error_code, record.is_stream) == (
        502,
        "upstream_unreachable",
        True,
    )
    assert record.response_id and record.response_id.startswith("resp_")
    assert record.prompt_tokens > 0 and record.completion_tokens > 0  # estimated
    assert record.cost_usd > 0
    assert stored is not None and json.loads(stored.response_body or "{}")["output"]
