"""Chat completions through the real openai SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCallFunction

from proxy.simulator.text import count_tokens

from .conftest import Control

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about rivers."}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "where": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                },
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


_NO_FUNCTION = ChoiceDeltaToolCallFunction()


def _collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_completion_has_the_real_shape_and_headers(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{29}", completion.id)
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    assert completion.system_fingerprint is not None
    assert completion.system_fingerprint.startswith("fp_")
    assert completion.service_tier == "default"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.message.annotations == []
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == count_tokens(choice.message.content or "")
    assert 8 <= usage.completion_tokens <= 60
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    for header in (
        "x-request-id",
        "openai-processing-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ):
        assert raw.headers.get(header), header
    again = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    before = int(raw.headers["x-ratelimit-remaining-requests"])
    assert int(again.headers["x-ratelimit-remaining-requests"]) == before - 1
    assert int(again.headers["x-ratelimit-remaining-tokens"]) < int(
        raw.headers["x-ratelimit-remaining-tokens"]
    )


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_has_same_text_and_usage_as_plain_answer(
    oai: openai.OpenAI, include_usage: bool
) -> None:
    plain = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    options: Any = {"include_usage": True} if include_usage else openai.omit
    with oai.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=options
    ) as stream:
        text, chunks = _collect(stream)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 8
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage == plain.usage
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None for c in chunks)


def test_stream_bytes_carry_usage_null_only_when_usage_requested(control: Control) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    _, headers, plain = control.raw("POST", "/v1/chat/completions", json.dumps(body).encode())
    assert headers["content-type"].startswith("text/event-stream")
    assert b',"usage":null' not in plain
    assert plain.endswith(b"data: [DONE]\n\n")
    body["stream_options"] = {"include_usage": True}
    _, _, with_usage = control.raw("POST", "/v1/chat/completions", json.dumps(body).encode())
    frames = [f for f in with_usage.split(b"\n\n") if f]
    assert all(f.startswith(b"data: ") for f in frames)
    assert all(b',"usage":null' in f for f in frames[:-2])
    assert b'"choices":[],"usage":{"prompt_tokens"' in frames[-2]
    assert frames[-1] == b"data: [DONE]"


def test_max_tokens_cuts_the_answer_with_finish_reason_length(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=3)
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 3
    assert count_tokens(plain.choices[0].message.content or "") == 3
    with oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_completion_tokens=3, stream=True
    ) as stream:
        text, chunks = _collect(stream)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tool_call_arguments_are_valid_for_the_tool_schema(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.id)
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_tokens(call.function.arguments)


def test_streamed_tool_call_rebuilds_the_same_arguments(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL])
    with oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
    ) as stream:
        chunks = list(stream)
    first = chunks[0].choices[0].delta.tool_calls
    assert first is not None and first[0].function is not None
    assert first[0].id is not None and first[0].function.name == "get_weather"
    fragments = [
        (c.choices[0].delta.tool_calls[0].function or _NO_FUNCTION).arguments or ""
        for c in chunks[1:]
        if c.choices[0].delta.tool_calls
    ]
    assert len(fragments) > 1
    (call,) = plain.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert "".join(fragments) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("tool_choice", "last_message"),
    [
        ("none", {"role": "user", "content": "hi"}),
        ("auto", {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}),
    ],
)
def test_text_answer_when_tools_are_off_or_a_tool_result_came_back(
    oai: openai.OpenAI, tool_choice: Any, last_message: Any
) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather?"}, last_message]
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], tool_choice=tool_choice
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content


def test_named_tool_choice_calls_that_tool(oai: openai.OpenAI) -> None:
    other: Any = {
        "type": "function",
        "function": {"name": "noop", "parameters": {"type": "object"}},
    }
    completion = oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[other, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"


def test_json_schema_response_format_gives_a_valid_document(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "labels": {"type": "array", "items": {"$ref": "#/$defs/label"}},
            "note": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        },
        "required": ["title", "score", "labels", "note"],
        "additionalProperties": False,
        "$defs": {"label": {"type": "string", "enum": ["a", "b"]}},
    }
    completion = oai.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "review", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)
    loose = oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


def test_answers_are_deterministic_per_request_and_seed(
    oai: openai.OpenAI, control: Control
) -> None:
    def ask(content: str) -> str:
        messages: Any = [{"role": "user", "content": content}]
        completion = oai.chat.completions.create(model="gpt-4o", messages=messages)
        return completion.choices[0].message.content or ""

    first = ask("same question")
    assert ask("same question") == first
    assert ask("another question") != first
    control.call("POST", "/_sim/config", {"seed": "other"})
    assert ask("same question") != first


def test_repeated_long_prefix_reports_cached_tokens(oai: openai.OpenAI) -> None:
    system = " ".join(["ledger"] * 1100)
    prefix_tokens = 4 + count_tokens(system)

    def ask(question: str) -> Any:
        messages: Any = [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]
        return oai.chat.completions.create(model="gpt-4o", messages=messages).usage

    first = ask("first question")
    assert first.prompt_tokens >= 1024
    assert first.prompt_tokens_details.cached_tokens == 0
    second = ask("second question")
    assert second.prompt_tokens_details.cached_tokens == prefix_tokens - prefix_tokens % 128
    short: Any = [{"role": "system", "content": "short"}, {"role": "user", "content": "q"}]
    for _ in range(2):
        usage = oai.chat.completions.create(model="gpt-4o", messages=short).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, None),
        (b'{"model": "gpt-4o"}', 400, "messages"),
        (b'{"model": "gpt-4o", "messages": []}', 400, "messages"),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user"}], "max_tokens": 0}',
            400,
            "max_tokens",
        ),
        (b'{"model": "gpt-4o", "messages": [', 400, None),
        (b"[1, 2]", 400, None),
    ],
)
def test_malformed_chat_requests_get_openai_shaped_errors(
    control: Control, body: bytes, status: int, param: str | None
) -> None:
    got, headers, payload = control.raw("POST", "/v1/chat/completions", body)
    assert got == status
    assert headers.get("x-request-id")
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
