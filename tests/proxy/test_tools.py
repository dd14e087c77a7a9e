"""Tool round trips in both dialects, whole and streamed, with the real SDKs: the calls
pass through unchanged and are priced, recorded (with the answer's id) and cached.
(The Responses API's round trip is in test_responses_api.)"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import openai
import pytest

from shared.accounts import Limits
from shared.catalogue import SEED_MODELS
from shared.pricing import COST_QUANTUM
from tests.support import ProxyServer, seed_accounts, wait_for

if TYPE_CHECKING:
    from tests.proxy.conftest import AnthropicFactory, OpenAIFactory, SimControl

GPT, CLAUDE = "gpt-4o-mini", "claude-haiku-4-5"
PRICES = {entry.name: entry for entry in SEED_MODELS}
SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
OPENAI_TOOL: Any = {"type": "function", "function": {"name": "forecast", "parameters": SCHEMA}}
CLAUDE_TOOL: Any = {"name": "forecast", "description": "Forecast.", "input_schema": SCHEMA}


def record_of(proxy: ProxyServer, response_id: str) -> Any:
    """The one record of the upstream call whose answer had this id (a cache hit serving
    the same answer is recorded with the id too)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from shared.models import RequestRecord

    def find() -> Any:
        proxy.flush()
        with Session(proxy.state.engine, expire_on_commit=False) as session:
            return session.scalars(
                select(RequestRecord)
                .where(RequestRecord.response_id == response_id)
                .where(RequestRecord.is_cached.is_(False))
            ).all()

    rows = wait_for(find)
    assert len(rows) == 1
    return rows[0]


def cost(model: str, prompt: int, completion: int, cached: int = 0) -> Decimal:
    prices = PRICES[model]
    total = (
        (prompt - cached) * prices.input_per_mtok
        + cached * prices.cached_input_per_mtok
        + completion * prices.output_per_mtok
    ) / Decimal(1_000_000)
    return total.quantize(COST_QUANTUM)


@pytest.fixture()
def cached_keys(proxy: ProxyServer) -> str:
    return seed_accounts(proxy.state.engine, limits=Limits(cache_ttl_seconds=60)).key


@pytest.mark.parametrize("is_stream", [False, True], ids=["whole", "stream"])
def test_openai_chat_tool_round_trip(
    proxy: ProxyServer,
    new_openai: OpenAIFactory,
    cached_keys: str,
    sim: SimControl,
    is_stream: bool,
) -> None:
    def ask(client: openai.OpenAI, messages: list[Any]) -> Any:
        options: Any = {"tools": [OPENAI_TOOL], "tool_choice": "auto", "parallel_tool_calls": False}
        if not is_stream:
            return client.chat.completions.create(model=GPT, messages=messages, **options)
        with client.chat.completions.stream(model=GPT, messages=messages, **options) as stream:
            return stream.get_final_completion()

    with new_openai(cached_keys) as client:
        messages: list[Any] = [{"role": "user", "content": "Forecast for Oslo?"}]
        first = ask(client, messages)
        sent = sim.last_request()["body"]
        (call,) = first.choices[0].message.tool_calls
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "forecast"
        assert set(json.loads(call.function.arguments)) >= {"city", "days"}
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
        ]
        second = ask(client, messages)
        again = ask(client, messages[:1])  # the first question, from the cache

    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (
        [OPENAI_TOOL],
        "auto",
        False,
    )
    assert sim.last_request()["body"]["messages"][-1]["tool_call_id"] == call.id
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    assert again.choices[0].message.tool_calls[0].id == call.id
    called, answered = record_of(proxy, first.id), record_of(proxy, second.id)
    assert called.is_stream is is_stream and answered.is_stream is is_stream
    assert called.cost_usd == cost(GPT, called.prompt_tokens, called.completion_tokens) > 0
    assert answered.cost_usd == cost(GPT, answered.prompt_tokens, answered.completion_tokens)
    assert first.usage is None or called.completion_tokens == first.usage.completion_tokens
    assert sum(1 for r in sim.requests() if r["path"] == "/v1/chat/completions") == 2
    _, body = proxy.record(called.id)
    assert body is not None and body.response_body
    stored = json.loads(body.response_body)["choices"][0]["message"]["tool_calls"][0]
    assert stored["id"] == call.id and stored["function"]["arguments"] == call.function.arguments


@pytest.mark.parametrize("is_stream", [False, True], ids=["whole", "stream"])
def test_anthropic_tool_use_round_trip(
    proxy: ProxyServer,
    new_anthropic: AnthropicFactory,
    cached_keys: str,
    sim: SimControl,
    is_stream: bool,
) -> None:
    def ask(client: anthropic.Anthropic, messages: list[Any]) -> Any:
        options: Any = {"tools": [CLAUDE_TOOL], "tool_choice": {"type": "auto"}}
        if not is_stream:
            return client.messages.create(
                model=CLAUDE, max_tokens=300, messages=messages, **options
            )
        with client.messages.stream(
            model=CLAUDE, max_tokens=300, messages=messages, **options
        ) as stream:
            return stream.get_final_message()

    with new_anthropic(cached_keys) as client:
        messages: list[Any] = [{"role": "user", "content": "Forecast for Oslo?"}]
        first = ask(client, messages)
        (use,) = [block for block in first.content if block.type == "tool_use"]
        assert first.stop_reason == "tool_use" and use.name == "forecast"
        assert set(use.input) >= {"city", "days"}
        messages += [
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}],
            },
        ]
        second = ask(client, messages)
        again = ask(client, messages[:1])

    sent = sim.last_request()["body"]
    assert sent["messages"][-1]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": use.id,
        "content": "clear",
    }
    assert sent["tools"] == [CLAUDE_TOOL] and sent["tool_choice"] == {"type": "auto"}
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    assert again.content[0].id == use.id  # a hit: the same answer
    called, answered = record_of(proxy, first.id), record_of(proxy, second.id)
    assert called.is_stream is is_stream
    assert (called.prompt_tokens, called.completion_tokens) == (
        first.usage.input_tokens,
        first.usage.output_tokens,
    )
    assert called.cost_usd == cost(CLAUDE, called.prompt_tokens, called.completion_tokens) > 0
    assert answered.cost_usd > 0
    assert sum(1 for r in sim.requests() if r["path"] == "/v1/messages") == 2
    _, body = proxy.record(called.id)
    assert body is not None and body.response_body
    stored = json.loads(body.response_body)["content"][0]
    assert (stored["type"], stored["id"], stored["input"]) == ("tool_use", use.id, use.input)
