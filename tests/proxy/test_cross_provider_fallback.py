"""Cross-provider fallback, end to end: the real SDKs -> the proxy -> the simulator, whose
fault queue (filtered by model) keeps the primary failing, so that a model of the other
provider answers — translated both ways, whole and streamed, tool calls included.

The module runs its own simulator and proxy (two attempts per model, fast backoff), and
every test makes its own models, so breaker state never leaks between tests.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from sqlalchemy.orm import Session

from proxy.endpoints.anthropic_messages import Messages
from proxy.endpoints.base import RequestFacts
from proxy.endpoints.openai_chat import ChatCompletions
from proxy.resilience import fallback_chain
from proxy.simulator import SimulatorThread
from proxy.translate import Crossing
from shared import accounts
from shared.catalogue import ModelEntry
from shared.db import transaction
from shared.models import ModelPrice, RequestBody, RequestRecord
from shared.pricing import Usage, price_usage
from tests.proxy.recorded import only_record
from tests.support import Accounts, ProxyServer, running_proxy, seed_accounts, settings_for

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
ATTEMPTS_PER_MODEL = 2
WEATHER_TOOL_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorThread]:
    with SimulatorThread() as sim:
        yield sim


@pytest.fixture(scope="module")
def gateway(
    pg_url: str, upstream: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    settings = settings_for(
        pg_url,
        upstream.base_url,
        Path(tmp_path_factory.mktemp("cross-provider")),
        retry_max_attempts=ATTEMPTS_PER_MODEL,
        retry_base_seconds=0.01,
        retry_max_seconds=0.02,
    )
    with running_proxy(settings) as server:
        yield server


class Sim:
    """The module simulator's controls."""

    def __init__(self, base_url: str, tls: ssl.SSLContext) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10, verify=tls)

    def fail(self, model: str, fault: str = "500") -> None:
        """Every attempt at ``model`` in the next call fails with ``fault``."""
        rule = {"fault": fault, "model": model, "count": ATTEMPTS_PER_MODEL}
        self.http.post("/_sim/faults", json=rule).raise_for_status()

    def last_body(self, path: str, model: str) -> dict[str, Any]:
        """The body of the last request the simulator got on ``path`` for ``model``."""
        log = self.http.get("/_sim/requests", params={"limit": 20}).raise_for_status().json()
        bodies = [
            r["body"]
            for r in log["requests"]
            if r["path"] == path and isinstance(r["body"], dict) and r["body"]["model"] == model
        ]
        assert bodies, f"no request for {model} on {path}"
        return dict(bodies[-1])


@pytest.fixture()
def sim(upstream: SimulatorThread, tls: ssl.SSLContext) -> Iterator[Sim]:
    control = Sim(upstream.base_url, tls)
    try:
        yield control
    finally:
        control.http.delete("/_sim/faults").raise_for_status()
        control.http.close()


@pytest.fixture(scope="module")
def acct(gateway: ProxyServer) -> Accounts:
    return seed_accounts(gateway.state.engine)


def add_pair(gateway: ProxyServer, primary_provider: str) -> tuple[str, str]:
    """A fresh model of ``primary_provider`` falling back to a fresh one of the other.
    Prices differ (primary 1/2, fallback 3/15 USD per Mtok), so a cost names its model."""
    other = "anthropic" if primary_provider == "openai" else "openai"
    primary, fallback = (f"xp-{uuid.uuid4().hex[:8]}-{side}" for side in ("a", "b"))
    with transaction(gateway.state.engine) as session:
        accounts.upsert_model(
            session,
            fallback,
            provider=other,
            upstream_model=None,
            input_per_mtok=Decimal(3),
            output_per_mtok=Decimal(15),
            cache_write_per_mtok=Decimal("3.75"),
        )
        accounts.upsert_model(
            session,
            primary,
            provider=primary_provider,
            upstream_model=None,
            input_per_mtok=Decimal(1),
            output_per_mtok=Decimal(2),
            fallbacks=[fallback],
        )
    gateway.state.config.clear()  # visible now, not at the next config poll
    return primary, fallback


def model_entry(gateway: ProxyServer, name: str) -> ModelEntry:
    with Session(gateway.state.engine) as session:
        row = session.get(ModelPrice, name)
        assert row is not None
        return ModelEntry.from_row(row)


def outcomes(record: RequestRecord) -> list[tuple[str, Any, str | None]]:
    return [
        (a["model"], a.get("status") or a.get("error"), a.get("translated_to"))
        for a in record.attempts or []
    ]


def check_record(
    gateway: ProxyServer, request_id: str, primary: str, fallback: str, target: str
) -> tuple[RequestRecord, RequestBody]:
    """The call's one record shows both failed attempts, the translated one that answered,
    the fallback as the answering model, and a cost at the fallback's prices."""
    record, body = only_record(gateway, request_id)
    assert body is not None and body.response_body is not None
    assert outcomes(record) == [(primary, 500, None)] * ATTEMPTS_PER_MODEL + [
        (fallback, 200, target)
    ]
    assert (record.status, record.model, record.answered_model, record.upstream_model) == (
        200,
        primary,
        fallback,
        fallback,
    )
    usage = Usage(
        record.prompt_tokens,
        record.completion_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
    )
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd == price_usage(usage, model_entry(gateway, fallback))
    assert record.cost_usd != price_usage(usage, model_entry(gateway, primary))
    return record, body


def rid() -> str:
    return f"xp-{uuid.uuid4()}"


@pytest.fixture()
def oai(gateway: ProxyServer, acct: Accounts, tls: ssl.SSLContext) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url + "/v1",
        api_key=acct.key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=tls),
    ) as client:
        yield client


@pytest.fixture()
def claude(
    gateway: ProxyServer, acct: Accounts, tls: ssl.SSLContext
) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=gateway.base_url,
        api_key=acct.key,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(verify=tls),
    ) as client:
        yield client


# -- an OpenAI caller answered by Claude ---------------------------------------------------


def test_chat_call_is_answered_by_a_claude_fallback(
    gateway: ProxyServer, sim: Sim, oai: openai.OpenAI
) -> None:
    primary, fallback = add_pair(gateway, "openai")
    sim.fail(primary)
    request_id = rid()
    raw = oai.chat.completions.with_raw_response.create(
        model=primary,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is a gateway?"},
        ],
        seed=7,
        extra_headers={"x-request-id": request_id},
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == fallback
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    sent = sim.last_body(MESSAGES_PATH, fallback)
    assert sent["system"] == "Answer briefly."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is a gateway?"}]}
    ]
    assert sent["max_tokens"] == 1024  # none asked for: what the call was charged for
    assert "seed" not in sent

    record, body = check_record(gateway, request_id, primary, fallback, "messages")
    assert orjson.loads(body.response_body or "") == raw.http_response.json()
    assert (record.attempts or [])[-1]["dropped_fields"] == ["seed"]
    assert record.completion_tokens == completion.usage.completion_tokens


def test_chat_stream_is_answered_by_a_claude_fallback(
    gateway: ProxyServer, sim: Sim, oai: openai.OpenAI
) -> None:
    primary, fallback = add_pair(gateway, "openai")
    sim.fail(primary)
    request_id = rid()
    stream = oai.chat.completions.create(
        model=primary,
        messages=[{"role": "user", "content": "Stream a short answer."}],
        max_completion_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": request_id},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and all(c.model == fallback for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0

    assert sim.last_body(MESSAGES_PATH, fallback)["stream"] is True
    record, body = check_record(gateway, request_id, primary, fallback, "messages")
    assert record.is_stream and record.completion_tokens == usage.completion_tokens
    answer = orjson.loads(body.response_body or "")
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("is_stream", [False, True])
def test_chat_tool_call_round_trip_through_a_claude_fallback(
    gateway: ProxyServer, sim: Sim, oai: openai.OpenAI, is_stream: bool
) -> None:
    primary, fallback = add_pair(gateway, "openai")
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_TOOL_SCHEMA,
            },
        }
    ]
    question: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    sim.fail(primary)
    if is_stream:
        with oai.chat.completions.stream(
            model=primary, messages=question, tools=tools, tool_choice="required"
        ) as stream:
            first = stream.get_final_completion()
    else:
        first = oai.chat.completions.create(
            model=primary, messages=question, tools=tools, tool_choice="required"
        )
    assert first.model == fallback and first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "weather"
    assert isinstance(orjson.loads(call.function.arguments), dict)
    sent = sim.last_body(MESSAGES_PATH, fallback)
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL_SCHEMA

    sim.fail(primary)
    request_id = rid()
    answer = oai.chat.completions.create(
        model=primary,
        messages=[
            *question,
            first.choices[0].message.model_dump(exclude_none=True, exclude_unset=True),
            {"role": "tool", "tool_call_id": call.id, "content": "4 C, snow"},
        ],
        tools=tools,
        extra_headers={"x-request-id": request_id},
    )
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    turns = sim.last_body(MESSAGES_PATH, fallback)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][-1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "weather",
        "input": orjson.loads(call.function.arguments),
    }
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "4 C, snow"}
    ]
    check_record(gateway, request_id, primary, fallback, "messages")


# -- an Anthropic caller answered by GPT ---------------------------------------------------


def test_messages_call_is_answered_by_a_gpt_fallback(
    gateway: ProxyServer, sim: Sim, claude: anthropic.Anthropic
) -> None:
    primary, fallback = add_pair(gateway, "anthropic")
    sim.fail(primary, "529")
    request_id = rid()
    raw = claude.messages.with_raw_response.create(
        model=primary,
        max_tokens=60,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "What is a gateway?"}],
        extra_body={"top_k": 3},
        extra_headers={"x-request-id": request_id},
    )
    message = raw.parse()
    assert message.type == "message" and message.model == fallback
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.content and message.content[0].type == "text" and message.content[0].text

    sent = sim.last_body(CHAT_PATH, fallback)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a gateway?"},
    ]
    assert sent["max_completion_tokens"] == 60 and "top_k" not in sent

    record, body = only_record(gateway, request_id)
    assert [(a["model"], a.get("status")) for a in record.attempts or []] == [
        (primary, 529),
        (primary, 529),
        (fallback, 200),
    ]
    assert (record.attempts or [])[-1]["translated_to"] == "chat.completions"
    assert (record.attempts or [])[-1]["dropped_fields"] == ["top_k"]
    assert record.answered_model == fallback
    assert body is not None and orjson.loads(body.response_body or "") == raw.http_response.json()
    assert record.cost_usd == price_usage(
        Usage(message.usage.input_tokens, message.usage.output_tokens),
        model_entry(gateway, fallback),
    )


def test_messages_stream_is_answered_by_a_gpt_fallback(
    gateway: ProxyServer, sim: Sim, claude: anthropic.Anthropic
) -> None:
    primary, fallback = add_pair(gateway, "anthropic")
    sim.fail(primary)
    request_id = rid()
    with claude.messages.stream(
        model=primary,
        max_tokens=50,
        messages=[{"role": "user", "content": "Stream a short answer."}],
        extra_headers={"x-request-id": request_id},
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text and message.model == fallback
    assert message.content[0].type == "text" and message.content[0].text == text
    assert message.usage.output_tokens > 0

    sent = sim.last_body(CHAT_PATH, fallback)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    record, body = check_record(gateway, request_id, primary, fallback, "chat.completions")
    assert record.is_stream and record.completion_tokens == message.usage.output_tokens
    assert orjson.loads(body.response_body or "")["content"] == [{"type": "text", "text": text}]


@pytest.mark.parametrize("is_stream", [False, True])
def test_messages_tool_use_round_trip_through_a_gpt_fallback(
    gateway: ProxyServer, sim: Sim, claude: anthropic.Anthropic, is_stream: bool
) -> None:
    primary, fallback = add_pair(gateway, "anthropic")
    tools: list[Any] = [
        {
            "name": "weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER_TOOL_SCHEMA,
        }
    ]
    question: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    sim.fail(primary)
    ask: dict[str, Any] = {
        "model": primary,
        "max_tokens": 100,
        "messages": question,
        "tools": tools,
        "tool_choice": {"type": "tool", "name": "weather"},
    }
    if is_stream:
        with claude.messages.stream(**ask) as stream:
            first = stream.get_final_message()
    else:
        first = claude.messages.create(**ask)
    assert first.model == fallback and first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "weather" and isinstance(use.input, dict)
    sent = sim.last_body(CHAT_PATH, fallback)
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}

    sim.fail(primary)
    request_id = rid()
    answer = claude.messages.create(
        model=primary,
        max_tokens=100,
        tools=tools,
        messages=[
            *question,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "4 C"}],
            },
        ],
        extra_headers={"x-request-id": request_id},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"
    turns = sim.last_body(CHAT_PATH, fallback)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "tool"]
    assert turns[1]["tool_calls"][0]["id"] == use.id
    assert orjson.loads(turns[1]["tool_calls"][0]["function"]["arguments"]) == use.input
    assert turns[2] == {"role": "tool", "tool_call_id": use.id, "content": "4 C"}
    check_record(gateway, request_id, primary, fallback, "chat.completions")


# -- which fallbacks a call may reach ------------------------------------------------------


def entry(name: str, provider: str, fallbacks: tuple[str, ...] = ()) -> ModelEntry:
    one = Decimal(1)
    return ModelEntry(name, provider, name, one, one, one, one, fallbacks)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (ChatCompletions(), ["gpt", "gpt-b", "claude"]),
        (Messages(), ["claude-a", "claude-b", "gpt"]),
    ],
)
def test_chains_reach_models_of_the_other_provider_where_a_bridge_exists(
    endpoint: Any, expected: list[str]
) -> None:
    catalogue = {
        m.name: m
        for m in (
            entry("gpt", "openai", ("gpt-b", "claude")),
            entry("gpt-b", "openai"),
            entry("claude", "anthropic"),
            entry("claude-a", "anthropic", ("claude-b", "gpt")),
            entry("claude-b", "anthropic"),
        )
    }
    primary = catalogue[expected[0]]
    facts = RequestFacts(model=primary.name, is_stream=False)
    crossing = Crossing(endpoint, facts, {}, default_max_tokens=lambda: 1024)
    chain = fallback_chain(primary, catalogue.get, lambda _: True, crossing.can_serve)
    assert [m.name for m in chain] == expected
    # An endpoint with no counterpart at the other provider keeps to its own.
    unbridged = Crossing(Unbridged(endpoint.provider), facts, {}, lambda: 1024)
    chain = fallback_chain(primary, catalogue.get, lambda _: True, unbridged.can_serve)
    assert [m.name for m in chain] == expected[:2]


class Unbridged(ChatCompletions):
    name = "embeddings"

    def __init__(self, provider: str) -> None:
        self.provider = provider
