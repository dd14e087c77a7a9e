"""A record's bodies read as chat bubbles, for both dialects, tools included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.conversation import (
    ATTACHMENT,
    ERROR,
    RAW,
    REFUSAL,
    TEXT,
    THINKING,
    TOOL_CALL,
    TOOL_RESULT,
    read_conversation,
    system_prompt_of,
)


def dumps(value: Any) -> str:
    return json.dumps(value)


def shape(endpoint: str, request: Any, response: Any) -> list[tuple[str, bool, list[Any]]]:
    """(role, is_answer, [(kind, text, name, call_id)…]) of each bubble."""
    request_text = request if isinstance(request, str) or request is None else dumps(request)
    response_text = response if isinstance(response, str) or response is None else dumps(response)
    conversation = read_conversation(endpoint, request_text, response_text)
    return [
        (b.role, b.is_answer, [(p.kind, p.text, p.name, p.call_id) for p in b.parts])
        for b in conversation.bubbles
    ]


OPENAI_TOOLS_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
    ],
}


def test_openai_chat_with_a_tool_round_trip() -> None:
    answer = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "18°C and cloudy."},
                "finish_reason": "stop",
            }
        ],
    }
    assert shape("chat.completions", OPENAI_TOOLS_REQUEST, answer) == [
        ("system", False, [(TEXT, "You are terse.", None, None)]),
        ("user", False, [(TEXT, "Weather in Paris?", None, None)]),
        ("assistant", False, [(TOOL_CALL, '{"city": "Paris"}', "get_weather", "call_1")]),
        ("tool", False, [(TOOL_RESULT, "18C, cloudy", None, "call_1")]),
        ("assistant", True, [(TEXT, "18°C and cloudy.", None, None)]),
    ]
    assert system_prompt_of("chat.completions", dumps(OPENAI_TOOLS_REQUEST)) == "You are terse."


def test_openai_answers_with_tool_calls_refusals_several_choices_and_images() -> None:
    request = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
    }
    answer = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c9", "function": {"name": "look", "arguments": "{}"}},
                    ],
                }
            },
            {"message": {"role": "assistant", "content": None, "refusal": "I can't help."}},
        ]
    }
    assert shape("chat.completions", request, answer) == [
        (
            "user",
            False,
            [(TEXT, "what is this", None, None), (ATTACHMENT, "[image_url content]", None, None)],
        ),
        ("assistant", True, [(TOOL_CALL, "{}", "look", "c9")]),
        ("assistant", True, [(REFUSAL, "I can't help.", None, None)]),
    ]


def test_a_stream_answer_is_read_from_its_assembled_body() -> None:
    # What the proxy stores for a streamed chat completion: the assembled answer.
    assembled = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel" + "lo!"}}],
    }
    request = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
    assert shape("chat.completions", request, assembled)[-1] == (
        "assistant",
        True,
        [(TEXT, "Hello!", None, None)],
    )


ANTHROPIC_TOOLS_REQUEST = {
    "model": "claude-sonnet-4-6",
    "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should call the tool."},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "-3C"}],
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "boom",
                    "is_error": True,
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ],
}


def test_anthropic_messages_with_tools_thinking_and_a_block_system_prompt() -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Cold."},
            {"type": "tool_use", "id": "toolu_3", "name": "forecast", "input": {"days": 1}},
        ],
    }
    bubbles = shape("messages", ANTHROPIC_TOOLS_REQUEST, answer)
    assert bubbles == [
        ("system", False, [(TEXT, "Be brief.\nUse tools.", None, None)]),
        ("user", False, [(TEXT, "Weather in Oslo?", None, None)]),
        (
            "assistant",
            False,
            [
                (THINKING, "I should call the tool.", None, None),
                (TEXT, "Checking.", None, None),
                (TOOL_CALL, json.dumps({"city": "Oslo"}, indent=2), "get_weather", "toolu_1"),
            ],
        ),
        ("tool", False, [(TOOL_RESULT, "-3C", None, "toolu_1")]),
        (
            "user",
            False,
            [
                (TOOL_RESULT, "[error] boom", None, "toolu_2"),
                (TEXT, "and tomorrow?", None, None),
            ],
        ),
        (
            "assistant",
            True,
            [
                (TEXT, "Cold.", None, None),
                (TOOL_CALL, json.dumps({"days": 1}, indent=2), "forecast", "toolu_3"),
            ],
        ),
    ]
    assert system_prompt_of("messages", dumps(ANTHROPIC_TOOLS_REQUEST)) == "Be brief.\nUse tools."


def test_openai_responses_input_items_and_output() -> None:
    request = {
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
            {"type": "function_call", "call_id": "fc_1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "fc_1", "output": "found"},
        ],
    }
    answer = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "easy"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Bonjour"}],
            },
        ]
    }
    assert shape("responses", request, answer) == [
        ("system", False, [(TEXT, "Answer in French.", None, None)]),
        ("user", False, [(TEXT, "Hello", None, None)]),
        ("assistant", False, [(TOOL_CALL, "{}", "lookup", "fc_1")]),
        ("tool", False, [(TOOL_RESULT, "found", None, "fc_1")]),
        ("assistant", True, [(THINKING, "easy", None, None)]),
        ("assistant", True, [(TEXT, "Bonjour", None, None)]),
    ]
    assert shape("responses", {"input": "just text"}, None) == [
        ("user", False, [(TEXT, "just text", None, None)])
    ]


def test_embeddings_show_the_inputs_and_what_came_back() -> None:
    answer = {"data": [{"embedding": [0.1, 0.2, 0.3]}, {"embedding": [0.4, 0.5, 0.6]}]}
    assert shape("embeddings", {"input": ["a", "b"]}, answer) == [
        ("user", False, [(TEXT, "a", None, None), (TEXT, "b", None, None)]),
        ("assistant", True, [(TEXT, "2 embedding(s) of 3 dimensions", None, None)]),
    ]


@pytest.mark.parametrize(
    ("endpoint", "error"),
    [
        ("chat.completions", {"error": {"message": "Rate limit", "type": "rate_limit_error"}}),
        ("messages", {"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}}),
    ],
)
def test_an_error_answer_is_one_error_bubble(endpoint: str, error: dict[str, Any]) -> None:
    bubbles = shape(endpoint, {"messages": [{"role": "user", "content": "hi"}]}, error)
    role, is_answer, parts = bubbles[-1]
    assert (role, is_answer, parts[0][0]) == ("assistant", True, ERROR)
    assert error["error"]["message"] in parts[0][1]


@pytest.mark.parametrize(
    ("request_body", "response_body"),
    [
        ("not json <script>alert(1)</script>", "upstream said: nope"),
        ('{"messages": "not a list", "system": 7}', '{"choices": [1, null, "x"]}'),
        ("[1, 2, 3]", "null"),
        ('{"messages": [{"role": 5, "content": {"odd": true}}]}', '{"content": "string"}'),
        (None, None),
        ("", ""),
    ],
)
def test_odd_bodies_never_raise(request_body: str | None, response_body: str | None) -> None:
    for endpoint in ("chat.completions", "messages", "responses", "embeddings", "unknown.thing"):
        conversation = read_conversation(endpoint, request_body, response_body)
        assert isinstance(conversation.preview(), str)
        assert isinstance(conversation.answer_text(), str)


def test_bodies_that_are_not_json_are_kept_raw() -> None:
    conversation = read_conversation("chat.completions", "<script>x</script>", "plain")
    assert [(b.role, b.parts[0].kind, b.parts[0].text) for b in conversation.bubbles] == [
        ("user", RAW, "<script>x</script>"),
        ("assistant", RAW, "plain"),
    ]


def test_an_unknown_endpoint_is_guessed_from_its_body() -> None:
    assert shape("messages.batches", ANTHROPIC_TOOLS_REQUEST, None)[0][0] == "system"
    assert shape("chat.other", OPENAI_TOOLS_REQUEST, {"choices": []})[1][0] == "user"


def test_preview_is_the_last_user_words_on_one_line() -> None:
    conversation = read_conversation("chat.completions", dumps(OPENAI_TOOLS_REQUEST), None)
    assert conversation.preview() == "Weather in Paris?"
    long = read_conversation(
        "messages", dumps({"messages": [{"role": "user", "content": "word " * 100}]}), None
    )
    assert len(long.preview(40)) == 40 and long.preview(40).endswith("…")
