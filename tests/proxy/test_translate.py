"""Cross-provider translation on recorded bodies: chat completions <-> messages, both ways.

Answers are checked against the official SDKs' own models (what a client parses);
requests against the body the other provider documents.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pytest

from proxy.endpoints.anthropic_messages import MessageStreamReader, read_anthropic_usage
from proxy.endpoints.base import RequestFacts
from proxy.endpoints.openai_chat import ChatCompletions, ChatStreamReader, read_openai_usage
from proxy.endpoints.sse import iter_events
from proxy.errors import UpstreamRejected
from proxy.replay import anthropic_message_events, openai_chat_events
from proxy.translate import (
    Crossing,
    bridge_for,
    chat_request,
    completion_from_message,
    message_from_completion,
    messages_request,
)
from shared.catalogue import ModelEntry

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
)
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}

# -- OpenAI caller, Anthropic model --------------------------------------------------------

CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this photo was taken, and in Oslo?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4 C"}]},
        {"role": "user", "content": "Summarise."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_PARAMETERS,
                "strict": True,
            },
        }
    ],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "temperature": 1.5,
    "top_p": 0.9,
    "stop": "END",
    "user": "end-user-7",
    "stream": True,
    "stream_options": {"include_usage": True},
    "n": 1,
    "seed": 42,
    "logprobs": True,
    "response_format": {"type": "json_object"},
}

MESSAGES_FOR_CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "system": "You are terse.\n\nUse metric units.",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this photo was taken, and in Oslo?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "4 C"},
                {"type": "text", "text": "Summarise."},
            ],
        },
    ],
    "max_tokens": 300,
    "temperature": 1.0,
    "stop_sequences": ["END"],
    "stream": True,
    "metadata": {"user_id": "end-user-7"},
    "tools": [
        {
            "name": "weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER_PARAMETERS,
        }
    ],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
}

MESSAGE_WITH_TOOL: dict[str, Any] = {  # as Anthropic answers
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAh=="},
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "weather",
            "input": {"city": "Paris"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 400,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 57,
        "service_tier": "standard",
    },
}


def test_chat_request_becomes_a_messages_request() -> None:
    translated = messages_request(copy.deepcopy(CHAT_REQUEST), default_max_tokens=1024)
    assert translated.body == MESSAGES_FOR_CHAT
    assert translated.dropped == ("top_p", "seed", "logprobs", "response_format")


def test_chat_request_translation_leaves_the_callers_body_alone() -> None:
    body = copy.deepcopy(CHAT_REQUEST)
    messages_request(body, default_max_tokens=1024)
    assert body == CHAT_REQUEST


def test_messages_request_gets_a_max_tokens_when_the_chat_request_set_none() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    translated = messages_request(body, default_max_tokens=777)
    assert translated.body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 777,
    }
    assert translated.dropped == ()
    legacy = messages_request({**body, "max_tokens": 50}, default_max_tokens=777)
    assert legacy.body["max_tokens"] == 50


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather"},
        ),
        (None, None),
    ],
)
def test_tool_choice_maps_to_anthropic(tool_choice: Any, expected: Any) -> None:
    body = {**CHAT_REQUEST, "tool_choice": tool_choice}
    del body["parallel_tool_calls"]
    assert messages_request(body, 1024).body.get("tool_choice") == expected


def test_unknown_and_unsupported_chat_fields_are_dropped_and_named() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "name": "ann", "content": [{"type": "input_audio"}]},
            {"role": "user", "content": "hi"},
        ],
        "n": 2,
        "frequency_penalty": 0.5,
        "tools": [{"type": "custom", "custom": {"name": "grammar"}}],
        "some_future_field": True,
    }
    translated = messages_request(body, 1024)
    assert translated.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    ]
    assert "tools" not in translated.body
    assert set(translated.dropped) == {
        "content part input_audio",
        "messages[].name",
        "tools of another type",
        "n",
        "frequency_penalty",
        "some_future_field",
    }


def test_message_answer_becomes_a_chat_completion() -> None:
    completion = completion_from_message(MESSAGE_WITH_TOOL, created=1_700_000_000)
    parsed = openai.types.chat.ChatCompletion.model_validate(completion)
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.type == "function" and call.function.name == "weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert (parsed.id, parsed.model, parsed.created) == (
        MESSAGE_WITH_TOOL["id"],
        "claude-sonnet-4-6",
        1_700_000_000,
    )
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (2500, 57)
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 2000
    # What the gateway prices from (cache writes live only in the provider's own usage).
    assert read_openai_usage(completion["usage"]).prompt_tokens == 2500
    assert read_anthropic_usage(MESSAGE_WITH_TOOL["usage"]).cache_write_tokens == 100


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reason_becomes_finish_reason(stop_reason: str | None, finish_reason: str) -> None:
    message = {
        **MESSAGE_WITH_TOOL,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": stop_reason,
    }
    completion = completion_from_message(message, created=0)
    assert completion["choices"][0]["finish_reason"] == finish_reason
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "ok",
        "refusal": None,
    }


# -- Anthropic caller, OpenAI model --------------------------------------------------------

MESSAGES_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "system": [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use metric units."},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need the tool.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "4 C"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER_PARAMETERS,
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
    ],
    "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
    "max_tokens": 256,
    "temperature": 0.2,
    "top_k": 5,
    "stop_sequences": ["END", "STOP"],
    "metadata": {"user_id": "end-user-9"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "stream": False,
}

CHAT_FOR_MESSAGES: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "messages": [
        {"role": "system", "content": "You are terse.\n\nUse metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "4 C"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ],
    "max_completion_tokens": 256,
    "temperature": 0.2,
    "stop": ["END", "STOP"],
    "stream": False,
    "user": "end-user-9",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_PARAMETERS,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "parallel_tool_calls": False,
}

COMPLETION_WITH_TOOLS: dict[str, Any] = {  # as OpenAI answers
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1_741_570_283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    },
                    {
                        "id": "call_def",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "not json"},
                    },
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def test_messages_request_becomes_a_chat_request() -> None:
    translated = chat_request(copy.deepcopy(MESSAGES_REQUEST))
    assert translated.body == CHAT_FOR_MESSAGES
    assert set(translated.dropped) == {
        "cache_control",
        "thinking blocks",
        "web_search_20250305 tools",
        "top_k",
        "thinking",
    }


def test_tool_results_go_first_and_errors_say_so() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "after"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "tool_result", "tool_use_id": "t2"},
                ],
            }
        ],
    }
    assert chat_request(body).body["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "after"}]},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "any"}, "required"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tool_choice_maps_to_openai(tool_choice: Any, expected: Any) -> None:
    body = {**MESSAGES_REQUEST, "tool_choice": tool_choice}
    translated = chat_request(body).body
    assert translated["tool_choice"] == expected
    assert "parallel_tool_calls" not in translated


def test_chat_answer_becomes_a_message() -> None:
    message = message_from_completion(COMPLETION_WITH_TOOLS)
    parsed = anthropic.types.Message.model_validate(message)
    assert parsed.stop_reason == "tool_use"
    assert [block.type for block in parsed.content] == ["tool_use", "tool_use"]
    first, second = parsed.content
    assert isinstance(first, anthropic.types.ToolUseBlock)
    assert isinstance(second, anthropic.types.ToolUseBlock)
    assert (first.id, first.name, first.input) == ("call_abc", "weather", {"city": "Oslo"})
    assert second.input == {"arguments": "not json"}
    assert parsed.usage.input_tokens == 93 and parsed.usage.cache_read_input_tokens == 1024
    assert parsed.usage.output_tokens == 46
    assert read_anthropic_usage(message["usage"]) == read_openai_usage(
        COMPLETION_WITH_TOOLS["usage"]
    )


@pytest.mark.parametrize(
    ("message", "finish_reason", "stop_reason", "texts"),
    [
        ({"role": "assistant", "content": "Hello."}, "stop", "end_turn", ["Hello."]),
        ({"role": "assistant", "content": "Hel"}, "length", "max_tokens", ["Hel"]),
        ({"role": "assistant", "content": ""}, "content_filter", "refusal", []),
        (
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            "stop",
            "refusal",
            ["I can't help with that."],
        ),
    ],
)
def test_finish_reason_becomes_stop_reason(
    message: dict[str, Any], finish_reason: str, stop_reason: str, texts: list[str]
) -> None:
    completion = {
        **COMPLETION_WITH_TOOLS,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    parsed = anthropic.types.Message.model_validate(message_from_completion(completion))
    assert parsed.stop_reason == stop_reason
    assert [block.text for block in parsed.content if block.type == "text"] == texts


# -- both ways ---------------------------------------------------------------------------------


def test_a_chat_conversation_survives_the_round_trip() -> None:
    body = {key: CHAT_REQUEST[key] for key in ("model", "messages", "tools")}
    body["messages"] = [m for m in body["messages"] if m["role"] not in ("system", "developer")]
    back = chat_request(messages_request(body, 1024).body).body
    assert [m["role"] for m in back["messages"]] == ["user", "assistant", "tool", "tool", "user"]
    assert back["messages"][1]["tool_calls"][1]["function"] == {
        "name": "weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert back["tools"][0]["function"]["parameters"] == WEATHER_PARAMETERS


def test_bridges_exist_only_between_chat_completions_and_messages() -> None:
    to_claude, to_gpt = (
        bridge_for("chat.completions", "anthropic"),
        bridge_for("messages", "openai"),
    )
    assert to_claude is not None and to_claude.target.upstream_path == "/v1/messages"
    assert to_gpt is not None and to_gpt.target.upstream_path == "/chat/completions"
    assert bridge_for("chat.completions", "openai") is None
    assert bridge_for("embeddings", "anthropic") is None


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_collected_claude_stream_replays_as_the_chat_completion(include_usage: bool) -> None:
    """The streamed path: Anthropic events -> assembled message -> chat chunks."""
    facts = RequestFacts(model="gpt-4o", is_stream=True, wants_stream_usage=include_usage)
    collector = MessageStreamReader()
    for event in iter_events(anthropic_message_events(MESSAGE_WITH_TOOL, facts)):
        collector.feed(event)
    assert collector.is_complete
    completion = completion_from_message(collector.assembled(), created=1)
    client_side = ChatStreamReader(facts)
    for event in iter_events(openai_chat_events(completion, facts)):
        client_side.feed(event)
    assert client_side.is_complete
    [choice] = client_side.assembled()["choices"]
    [expected] = completion_from_message(MESSAGE_WITH_TOOL, created=1)["choices"]
    assert choice["finish_reason"] == expected["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == expected["message"]["content"]
    assert choice["message"]["tool_calls"] == expected["message"]["tool_calls"]
    assert collector.usage() == read_anthropic_usage(MESSAGE_WITH_TOOL["usage"])


def test_a_collected_gpt_stream_replays_as_the_message() -> None:
    facts = RequestFacts(model="claude-sonnet-4-6", is_stream=True, wants_stream_usage=True)
    collector = ChatStreamReader(facts)
    for event in iter_events(openai_chat_events(COMPLETION_WITH_TOOLS, facts)):
        collector.feed(event)
    message = message_from_completion(collector.assembled())
    client_side = MessageStreamReader()
    for event in iter_events(anthropic_message_events(message, facts)):
        client_side.feed(event)
    assert client_side.is_complete
    parsed = anthropic.types.Message.model_validate(client_side.assembled())
    assert parsed == anthropic.types.Message.model_validate(
        message_from_completion(COMPLETION_WITH_TOOLS)
    )


def test_crossing_marks_translated_attempts_and_rephrases_refusals() -> None:
    one = Decimal(1)
    claude = ModelEntry("claude-x", "anthropic", "claude-x-up", one, one, one, one)
    facts = RequestFacts(model="gpt-x", is_stream=False)
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    crossing = Crossing(ChatCompletions(), facts, body, default_max_tokens=lambda: 99)
    path, sent = crossing.request(claude)
    assert path == "/v1/messages"
    assert (sent["model"], sent["max_tokens"]) == ("claude-x-up", 99)
    attempts: list[dict[str, Any]] = [
        {"model": "gpt-x", "status": 500},
        {"model": "claude-x", "error": "circuit_open"},
        {"model": "claude-x", "status": 400},
    ]
    crossing.note(attempts)
    assert attempts == [
        {"model": "gpt-x", "status": 500},
        {"model": "claude-x", "error": "circuit_open"},
        {
            "model": "claude-x",
            "status": 400,
            "translated_to": "messages",
            "dropped_fields": ["seed"],
        },
    ]
    refused = UpstreamRejected(400, b'{"type":"error"}', "max_tokens: too large", None)
    error = crossing.rejection(refused)
    assert not isinstance(error, UpstreamRejected)  # rendered in the caller's dialect
    assert (error.status, error.code) == (400, "upstream_rejected")
    assert "max_tokens: too large" in error.message
