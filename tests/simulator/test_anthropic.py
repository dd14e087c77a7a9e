"""Anthropic Messages through the real anthropic SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import jsonschema
import pytest

from proxy.simulator.text import count_tokens

from .conftest import ANTHROPIC_MODEL, Control

MESSAGES: Any = [{"role": "user", "content": "Tell me about mountains."}]
TOOL: Any = {
    "name": "get_stock_price",
    "description": "Current price of a stock",
    "input_schema": {
        "type": "object",
        "properties": {
            "ticker": {"type": "string", "minLength": 1, "maxLength": 5},
            "exchange": {"type": "string", "enum": ["NYSE", "NASDAQ"]},
            "levels": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        },
        "required": ["ticker"],
    },
}


def test_message_has_the_real_shape_and_headers(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=200, messages=MESSAGES
    )
    message = raw.parse()
    assert re.fullmatch(r"msg_01[A-Za-z0-9]{22}", message.id)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == ANTHROPIC_MODEL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    (block,) = message.content
    assert block.type == "text"
    assert message.usage.output_tokens == count_tokens(block.text)
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.service_tier == "standard"
    assert raw.headers["request-id"].startswith("req_")
    for kind in ("requests", "tokens"):
        for field in ("limit", "remaining", "reset"):
            assert raw.headers.get(f"anthropic-ratelimit-{kind}-{field}")


def test_stream_helper_gives_the_same_message(claude: anthropic.Anthropic) -> None:
    plain = claude.messages.create(model=ANTHROPIC_MODEL, max_tokens=200, messages=MESSAGES)
    with claude.messages.stream(model=ANTHROPIC_MODEL, max_tokens=200, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert plain.content[0].type == "text"
    assert text == plain.content[0].text
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"


def test_raw_stream_events_come_in_the_real_order(control: Control) -> None:
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 50, "messages": MESSAGES, "stream": True}
    status, headers, payload = control.raw("POST", "/v1/messages", json.dumps(body).encode())
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [frame.split("\n")[0] for frame in payload.decode().split("\n\n") if frame]
    assert events[:3] == ["event: message_start", "event: content_block_start", "event: ping"]
    assert events[-3:] == [
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    start = json.loads(payload.decode().split("\n\n")[0].split("data: ", 1)[1])
    assert start["message"]["content"] == [] and start["message"]["usage"]["output_tokens"] == 1


def test_max_tokens_stops_the_answer(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=ANTHROPIC_MODEL, max_tokens=2, messages=MESSAGES)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_tools_give_a_tool_use_block_valid_for_the_schema(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=300, messages=MESSAGES, tools=[TOOL]
    )
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert block.type == "tool_use"
    assert re.fullmatch(r"toolu_01[A-Za-z0-9]{22}", block.id)
    assert block.name == "get_stock_price"
    jsonschema.validate(block.input, TOOL["input_schema"])
    with claude.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=300, messages=MESSAGES, tools=[TOOL]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[-1].type == "tool_use"
    assert final.content[-1].input == block.input
    assert final.stop_reason == "tool_use"


def test_tool_result_gets_a_text_answer(claude: anthropic.Anthropic) -> None:
    messages: Any = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": TOOL["name"], "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42.0"}],
        },
    ]
    message = claude.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=300, messages=messages, tools=[TOOL]
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"


def test_count_tokens_matches_the_input_tokens_of_a_message(
    claude: anthropic.Anthropic,
) -> None:
    system: Any = [{"type": "text", "text": "You are terse."}]
    counted = claude.messages.count_tokens(
        model=ANTHROPIC_MODEL, system=system, messages=MESSAGES, tools=[TOOL]
    )
    message = claude.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=100, system=system, messages=MESSAGES, tools=[TOOL]
    )
    assert counted.input_tokens == message.usage.input_tokens > 0


def test_cache_control_prefix_is_written_then_read(claude: anthropic.Anthropic) -> None:
    long_text = " ".join(["policy"] * 1500)
    system: Any = [
        {"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}},
    ]

    def ask(question: str) -> Any:
        messages: Any = [{"role": "user", "content": question}]
        return claude.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=50, system=system, messages=messages
        ).usage

    first = ask("one")
    assert first.cache_creation_input_tokens == 1500
    assert first.cache_read_input_tokens == 0
    second = ask("two")
    assert second.cache_creation_input_tokens == 0
    assert second.cache_read_input_tokens == 1500
    assert second.input_tokens == first.input_tokens == 4 + 1
    small: Any = [{"type": "text", "text": "tiny", "cache_control": {"type": "ephemeral"}}]
    usage = claude.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=5, system=small, messages=MESSAGES
    ).usage
    assert usage.cache_creation_input_tokens == usage.cache_read_input_tokens == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": ANTHROPIC_MODEL, "messages": MESSAGES}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": MESSAGES}, "model: Field required"),
        ({"model": ANTHROPIC_MODEL, "max_tokens": 5}, "messages: Field required"),
    ],
)
def test_missing_fields_get_anthropic_shaped_errors(
    control: Control, body: Any, message: str
) -> None:
    status, headers, payload = control.raw("POST", "/v1/messages", json.dumps(body).encode())
    assert status == 400
    error = json.loads(payload)
    assert error["type"] == "error"
    assert error["error"] == {"type": "invalid_request_error", "message": message}
    assert headers["request-id"] == error["request_id"]


def test_missing_max_tokens_raises_bad_request_in_the_sdk(control: Control) -> None:
    with (
        anthropic.Anthropic(
            base_url=control.base_url, api_key="sk-ant-test", max_retries=0
        ) as client,
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        client.post(
            "/v1/messages",
            body={"model": ANTHROPIC_MODEL, "messages": MESSAGES},
            cast_to=object,
        )
    assert caught.value.status_code == 400
