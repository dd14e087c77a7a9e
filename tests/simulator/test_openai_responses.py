"""The Responses API through the real openai SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from proxy.simulator.text import count_tokens

from .conftest import Control

TOOL: Any = {
    "type": "function",
    "name": "lookup_order",
    "description": "Find an order",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
        "required": ["order_id", "verbose"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_create_returns_a_completed_response_with_usage(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input="Describe a harbor.")
    assert re.fullmatch(r"resp_[0-9a-f]+", response.id)
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "gpt-4.1"
    assert response.error is None and response.incomplete_details is None
    (item,) = response.output
    assert item.type == "message" and item.status == "completed" and item.role == "assistant"
    assert item.id.startswith("msg_")
    assert item.content[0].type == "output_text"
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == count_tokens(response.output_text)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_create_with_stream_true_sends_the_typed_event_sequence(oai: openai.OpenAI) -> None:
    plain = oai.responses.create(model="gpt-4.1", input="Describe a harbor.")
    with oai.responses.create(model="gpt-4.1", input="Describe a harbor.", stream=True) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == plain.output_text
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == plain.usage


def test_stream_helper_accumulates_the_final_response(oai: openai.OpenAI) -> None:
    plain = oai.responses.create(model="gpt-4.1", input="Describe a harbor.")
    with oai.responses.stream(model="gpt-4.1", input="Describe a harbor.") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == plain.output_text
    assert final.usage == plain.usage


def test_function_tool_gives_a_function_call_item(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input="Where is order 7?", tools=[TOOL])
    (item,) = response.output
    assert item.type == "function_call"
    assert item.name == "lookup_order" and item.status == "completed"
    assert (item.id or "").startswith("fc_") and item.call_id.startswith("call_")
    jsonschema.validate(json.loads(item.arguments), TOOL["parameters"])
    with oai.responses.stream(model="gpt-4.1", input="Where is order 7?", tools=[TOOL]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"
    assert "".join(deltas) == final.output[0].arguments == item.arguments


def test_function_call_output_gets_a_text_answer(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="gpt-4.1", input="Where is order 7?", tools=[TOOL])
    call = first.output[0]
    assert call.type == "function_call"
    follow_up = oai.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}],
        tools=[TOOL],
    )
    assert follow_up.output[0].type == "message"
    assert follow_up.previous_response_id == first.id
    assert first.usage is not None and follow_up.usage is not None
    assert follow_up.usage.input_tokens > first.usage.total_tokens


def test_json_schema_text_format_gives_a_valid_document(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = oai.responses.create(
        model="gpt-4.1",
        input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )
    jsonschema.validate(json.loads(response.output_text), schema)


def test_retrieve_cancel_and_delete_a_stored_response(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model="gpt-4.1", input="hello")
    assert oai.responses.retrieve(created.id).output_text == created.output_text
    assert oai.responses.cancel(created.id).id == created.id
    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)


def test_input_items_are_listed_newest_first_and_paged(oai: openai.OpenAI) -> None:
    created = oai.responses.create(
        model="gpt-4.1",
        input=[{"role": "user", "content": f"question {n}"} for n in range(3)],
    )

    newest_first = oai.responses.input_items.list(created.id)
    page = oai.responses.input_items.list(created.id, order="asc", limit=1)

    texts = [item.content[0].text for item in newest_first.data]  # type: ignore[union-attr]
    assert texts == ["question 2", "question 1", "question 0"]
    assert newest_first.has_more is False
    assert [item.id for item in page.data] == [newest_first.data[-1].id]
    assert page.has_more is True
    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.input_items.list(created.id)


def test_unknown_previous_response_id_is_a_404_with_the_real_error(control: Control) -> None:
    body = {"model": "gpt-4.1", "input": "hi", "previous_response_id": "resp_missing"}
    status, _, payload = control.raw("POST", "/v1/responses", json.dumps(body).encode())
    assert status == 404
    assert json.loads(payload) == {
        "error": {
            "message": "Previous response with id 'resp_missing' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


def test_max_output_tokens_makes_the_response_incomplete(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input="hello", max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 4
