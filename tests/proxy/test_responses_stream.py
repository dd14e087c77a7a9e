"""Responses API translation on recorded bodies: usage, the stream reader, the replayer,
output validation, and what the cache may store (the SDK side is in test_responses_api)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import orjson
import pytest

from proxy.cache import is_finished
from proxy.endpoints.base import RequestFacts
from proxy.endpoints.openai_responses import Responses, ResponsesStreamReader
from proxy.endpoints.sse import iter_events
from proxy.errors import InvalidRequest
from proxy.output_schema import compile_validator, is_valid_answer
from proxy.replay import openai_response_events
from shared.catalogue import SEED_MODELS
from shared.pricing import Usage, price_usage

RESPONSES = Responses()
LONG_TEXT = "The gateway meters every call. " * 12  # several replay pieces
USAGE: dict[str, Any] = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 700,
    "output_tokens_details": {"reasoning_tokens": 500},
    "total_tokens": 2700,
}
RESPONSE: dict[str, Any] = {
    "id": "resp_abc",
    "object": "response",
    "created_at": 1_700_000_000,
    "status": "completed",
    "model": "o4-mini",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [], "content": None},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": LONG_TEXT, "annotations": [], "logprobs": []}
            ],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": '{"q": "' + "x" * 150 + '"}',
        },
    ],
    "usage": USAGE,
}
FACTS = RequestFacts(model="o4-mini", is_stream=True)


def read_back(frames: list[bytes]) -> ResponsesStreamReader:
    reader = ResponsesStreamReader()
    for event in iter_events(frames):
        assert reader.feed(event) == event.raw  # forwarded unchanged
    return reader


def test_usage_prices_cached_input_at_the_cached_rate_and_reasoning_as_output() -> None:
    usage = RESPONSES.read_usage(RESPONSE)
    assert usage == Usage(prompt_tokens=2000, completion_tokens=700, cache_read_tokens=1024)
    entry = next(e for e in SEED_MODELS if e.name == "gpt-4o-mini")
    expected = (
        976 * entry.input_per_mtok
        + 1024 * entry.cached_input_per_mtok
        + 700 * entry.output_per_mtok
    ) / Decimal(1_000_000)
    assert price_usage(usage, entry) == expected.quantize(Decimal("0.00000001"))


def test_replayed_events_read_back_into_the_same_response() -> None:
    frames = openai_response_events(RESPONSE, FACTS)
    reader = read_back(frames)

    assert reader.is_complete and reader.upstream_id == "resp_abc"
    assert reader.assembled() == RESPONSE
    assert reader.usage() == RESPONSES.read_usage(RESPONSE)
    kinds = [orjson.loads(event.data)["type"] for event in iter_events(frames)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done")
    assert kinds.count("response.output_text.delta") > 1
    assert kinds.count("response.function_call_arguments.delta") > 1
    numbers = [orjson.loads(event.data)["sequence_number"] for event in iter_events(frames)]
    assert numbers == list(range(len(frames)))


def test_incomplete_response_replays_with_its_own_terminal_event() -> None:
    incomplete = {**RESPONSE, "status": "incomplete"}
    frames = openai_response_events(incomplete, FACTS)
    assert frames[-1].startswith(b"event: response.incomplete\n")
    assert read_back(frames).assembled() == incomplete


def test_stream_cut_off_is_assembled_from_its_deltas() -> None:
    frames = openai_response_events(RESPONSE, FACTS)
    cut = [frame for frame in frames if b"output_text.done" not in frame]
    cut = cut[: next(i for i, f in enumerate(cut) if b"content_part.done" in f)]
    reader = read_back(cut)

    assert not reader.is_complete
    assembled = reader.assembled()
    assert assembled["id"] == "resp_abc" and assembled["status"] == "in_progress"
    assert assembled["output"][0]["type"] == "reasoning"
    assert assembled["output"][1]["content"][0]["text"] == LONG_TEXT
    assert reader.usage() == Usage()


def test_terminal_event_without_output_is_filled_from_finished_items() -> None:
    frames = openai_response_events(RESPONSE, FACTS)
    final = orjson.loads(frames[-1].split(b"data: ", 1)[1])
    final["response"] = {k: v for k, v in final["response"].items() if k != "output"}
    frames[-1] = b"event: response.completed\ndata: " + orjson.dumps(final) + b"\n\n"

    assert read_back(frames).assembled()["output"] == RESPONSE["output"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{"name": "Oslo"}', True), ('{"name": 3}', False), ("not json", False)],
)
def test_output_validation_reads_the_message_text(text: str, expected: bool) -> None:
    validator = compile_validator(
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    )
    assert validator is not None
    answer = copy.deepcopy(RESPONSE)
    answer["output"][1]["content"][0]["text"] = text

    assert is_valid_answer(validator, answer) is expected


def test_output_validation_has_nothing_to_check_in_a_function_call_only() -> None:
    validator = compile_validator({"type": "object"})
    assert validator is not None
    answer = {**RESPONSE, "output": [RESPONSE["output"][2]]}
    assert is_valid_answer(validator, answer) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [("completed", True), ("incomplete", True), (None, True), ("queued", False), ("failed", False)],
)
def test_only_finished_answers_may_be_cached(status: str | None, expected: bool) -> None:
    assert is_finished({"status": status} if status else {"id": "chatcmpl-1"}) is expected


def test_request_reads_instructions_input_items_and_tool_outputs_for_screening() -> None:
    facts = RESPONSES.read_request(
        {
            "model": "gpt-4o-mini",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"a":1}'},
                {"type": "function_call_output", "call_id": "c", "output": "tool said hi"},
            ],
            "max_output_tokens": 300,
            "previous_response_id": "resp_1",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "safety_identifier": "user-9",
        },
        {},
    )
    assert facts.prompt_text == ["Be brief.", "hello", '{"a":1}', "tool said hi"]
    assert (facts.message_count, facts.max_tokens) == (3, 300)
    assert facts.previous_response_id == "resp_1"
    assert facts.output_schema == {"type": "object"}
    assert facts.end_user == "user-9"


def test_string_input_is_one_item() -> None:
    facts = RESPONSES.read_request({"model": "gpt-4o-mini", "input": "hi"}, {})
    assert (facts.prompt_text, facts.message_count, facts.is_stream) == (["hi"], 1, False)


def test_input_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        RESPONSES.read_request({"model": "gpt-4o-mini", "input": {"text": "hi"}}, {})
    assert caught.value.param == "input"
