"""Replayed streams carry exactly the answer they were made from (the SDK side is in test_cache)."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.endpoints.anthropic_messages import MessageStreamReader
from proxy.endpoints.base import RequestFacts
from proxy.endpoints.openai_chat import ChatStreamReader
from proxy.endpoints.sse import iter_events
from proxy.replay import anthropic_message_events, openai_chat_events

LONG_TEXT = "The gateway meters every call. " * 12  # several pieces

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": LONG_TEXT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 60,
        "total_tokens": 72,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "system_fingerprint": "fp_1",
}
TOOL_COMPLETION: dict[str, Any] = {
    **COMPLETION,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "' + "x" * 150 + '"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "n", "arguments": "{}"},
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
}
MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me think. " * 10, "signature": "sig=="},
        {"type": "text", "text": LONG_TEXT},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x" * 100}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1024,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 90,
        "service_tier": "standard",
    },
}


def chunks_of(frames: list[bytes]) -> list[Any]:
    return [orjson.loads(event.data) for event in iter_events(frames) if event.data != b"[DONE]"]


def test_openai_replay_reassembles_to_the_same_completion() -> None:
    facts = RequestFacts(model="gpt-4o-mini", is_stream=True, wants_stream_usage=True)
    frames = openai_chat_events(COMPLETION, facts)
    reader = ChatStreamReader(facts)
    for event in iter_events(frames):
        reader.feed(event)

    assembled = reader.assembled()
    assert reader.is_complete and frames[-1] == b"data: [DONE]\n\n"
    assert assembled["id"] == COMPLETION["id"]
    assert assembled["choices"][0]["message"]["content"] == LONG_TEXT
    assert assembled["choices"][0]["finish_reason"] == "stop"
    assert assembled["usage"] == COMPLETION["usage"]
    assert len(frames) > 4  # the text arrives in several deltas


def test_openai_replay_sends_usage_only_when_asked() -> None:
    with_usage = chunks_of(
        openai_chat_events(COMPLETION, RequestFacts("m", True, wants_stream_usage=True))
    )
    without = chunks_of(openai_chat_events(COMPLETION, RequestFacts("m", True)))

    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == COMPLETION["usage"]
    assert all(chunk["usage"] is None for chunk in with_usage[:-1])
    assert all("usage" not in chunk and chunk["choices"] for chunk in without)
    assert {chunk["object"] for chunk in without} == {"chat.completion.chunk"}


def test_openai_tool_calls_replay_with_their_ids_and_arguments() -> None:
    facts = RequestFacts(model="gpt-4o-mini", is_stream=True)
    reader = ChatStreamReader(facts)
    for event in iter_events(openai_chat_events(TOOL_COMPLETION, facts)):
        reader.feed(event)

    message = reader.assembled()["choices"][0]["message"]
    assert message["tool_calls"] == TOOL_COMPLETION["choices"][0]["message"]["tool_calls"]
    assert reader.assembled()["choices"][0]["finish_reason"] == "tool_calls"


def test_anthropic_replay_reassembles_to_the_same_message() -> None:
    frames = anthropic_message_events(MESSAGE, RequestFacts("claude-haiku-4-5", True))
    reader = MessageStreamReader()
    for event in iter_events(frames):
        reader.feed(event)

    assert reader.is_complete
    assert reader.assembled() == MESSAGE
    kinds = [event.event for event in iter_events(frames)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"} <= {
        chunk["delta"]["type"]
        for chunk in chunks_of(frames)
        if chunk["type"] == "content_block_delta"
    }
