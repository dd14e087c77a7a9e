"""Output validation: answers checked against the JSON schema their request asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.output_schema import SchemaValidators, is_valid_answer
from shared.models import Flag
from tests.proxy.conftest import SimControl
from tests.support import Accounts, ProxyServer

MODEL = "gpt-4o-mini"
HEADER = "x-metergate-output-valid"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city", "strict": True, "schema": SCHEMA},
}
MESSAGES = [{"role": "user", "content": "The largest city in Peru, as JSON."}]


@pytest.fixture(scope="module")
def base_client(proxy: ProxyServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="-", max_retries=0) as client:
        yield client


@pytest.fixture()
def client(base_client: openai.OpenAI, acct: Accounts) -> openai.OpenAI:
    return base_client.with_options(api_key=acct.key)


def flags_of(proxy: ProxyServer, record_id: str) -> list[str]:
    with Session(proxy.state.engine) as session:
        return list(session.scalars(select(Flag.reason).where(Flag.record_id == record_id)))


def chat_paths(sim: SimControl) -> list[str]:
    return [r["path"] for r in sim.requests() if r["path"] == "/v1/chat/completions"]


def test_a_valid_answer_is_marked_valid(
    proxy: ProxyServer, client: openai.OpenAI, sim: SimControl
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT
    )

    assert raw.headers[HEADER] == "true"
    assert set(json.loads(raw.parse().choices[0].message.content or "")) == {"city", "population"}
    record, _ = proxy.record(raw.headers["x-request-id"])
    assert record.output_valid is True and not record.is_flagged
    assert len(chat_paths(sim)) == 1


def test_an_invalid_answer_is_retried_once_and_the_valid_retry_served(
    proxy: ProxyServer, client: openai.OpenAI, sim: SimControl
) -> None:
    sim.queue_fault(fault="invalid_json_output", count=1, path="/v1/chat/completions")

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT
    )

    completion = raw.parse()
    assert raw.headers[HEADER] == "true"
    json.loads(completion.choices[0].message.content or "")
    assert len(chat_paths(sim)) == 2
    record, _ = proxy.record(raw.headers["x-request-id"])
    assert record.output_valid is True and flags_of(proxy, record.id) == []
    # Both attempts were paid for: the record carries the usage of the two.
    assert completion.usage is not None
    assert record.prompt_tokens == 2 * completion.usage.prompt_tokens


def test_an_answer_invalid_after_the_retry_is_served_flagged(
    proxy: ProxyServer, client: openai.OpenAI, sim: SimControl
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=JSON_SCHEMA_FORMAT,
        extra_body={"sim_fault": "invalid_json_output"},  # every attempt answers broken JSON
    )

    content = raw.parse().choices[0].message.content or ""
    assert raw.status_code == 200 and raw.headers[HEADER] == "false"
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    assert len(chat_paths(sim)) == 2
    record, _ = proxy.record(raw.headers["x-request-id"])
    assert record.output_valid is False and record.is_flagged
    assert flags_of(proxy, record.id) == ["invalid_output"]


def test_an_answer_breaking_the_schema_but_valid_json_is_invalid(
    proxy: ProxyServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.state.pipeline.gateway, "output_retries", 0)
    # The simulated model cannot honour "pattern": its answer is JSON, but not this JSON.
    schema = {
        **SCHEMA,
        "properties": {**SCHEMA["properties"], "city": {"type": "string", "pattern": "^[0-9]+$"}},
    }

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )

    json.loads(raw.parse().choices[0].message.content or "")
    assert raw.headers[HEADER] == "false"
    record, _ = proxy.record(raw.headers["x-request-id"])
    assert record.output_valid is False


def test_output_retries_zero_serves_the_first_answer(
    proxy: ProxyServer, client: openai.OpenAI, sim: SimControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.state.pipeline.gateway, "output_retries", 0)
    sim.queue_fault(fault="invalid_json_output", count=1, path="/v1/chat/completions")

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT
    )

    assert raw.headers[HEADER] == "false"
    assert len(chat_paths(sim)) == 1


@pytest.mark.parametrize(("fault", "is_valid"), [(None, True), ("invalid_json_output", False)])
def test_a_stream_is_checked_once_assembled_and_only_flagged(
    proxy: ProxyServer,
    client: openai.OpenAI,
    sim: SimControl,
    fault: str | None,
    is_valid: bool,
) -> None:
    extra = {"sim_fault": fault} if fault else {}
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=JSON_SCHEMA_FORMAT,
        stream=True,
        extra_body=extra,
    ) as response:
        request_id = response.headers["x-request-id"]
        assert HEADER not in response.headers  # decided after the headers were sent
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )

    assert text
    assert len(chat_paths(sim)) == 1  # a stream is never asked for again
    record, _ = proxy.record(request_id)
    assert record.output_valid is is_valid
    assert flags_of(proxy, record.id) == ([] if is_valid else ["invalid_output"])


@pytest.mark.parametrize(
    "response_format", [None, {"type": "json_object"}, {"type": "text"}], ids=str
)
def test_no_schema_means_no_verdict(
    proxy: ProxyServer, client: openai.OpenAI, response_format: dict[str, Any] | None
) -> None:
    extra = {"response_format": response_format} if response_format else {}
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, **extra)
    assert HEADER not in raw.headers
    record, _ = proxy.record(raw.headers["x-request-id"])
    assert record.output_valid is None


def test_anthropic_answers_are_not_checked(proxy: ProxyServer, acct: Accounts) -> None:
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=acct.key, max_retries=0) as claude:
        raw = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
        )
    assert HEADER not in raw.headers


# -- the checker on recorded answers ---------------------------------------------------


def answer_with(message: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}}]}


@pytest.mark.parametrize(
    ("message", "verdict"),
    [
        ({"content": '{"city": "Lima", "population": 9000000}'}, True),
        ({"content": '{"city": "Lima"}'}, False),
        ({"content": '{"city": "Lima", "population": 9000000, "extra": 1}'}, False),
        ({"content": '{"city": "Lima", "population": '}, False),
        ({"content": ""}, False),
        ({"content": None, "refusal": "I can't help with that."}, None),
        ({"content": None, "tool_calls": [{"id": "call_1", "type": "function"}]}, None),
    ],
)
def test_is_valid_answer(message: dict[str, Any], verdict: bool | None) -> None:
    validator = SchemaValidators().get(SCHEMA)
    assert validator is not None
    assert is_valid_answer(validator, answer_with(message)) is verdict


def test_validators_are_compiled_once_per_schema() -> None:
    validators = SchemaValidators()
    first = validators.get(SCHEMA)
    same = validators.get(json.loads(json.dumps(SCHEMA, sort_keys=True)))
    assert first is same


def test_an_invalid_schema_gets_no_validator() -> None:
    assert SchemaValidators().get({"type": "no-such-type"}) is None
