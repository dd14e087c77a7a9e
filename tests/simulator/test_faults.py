"""Fault injection by header, body field and control queue, seen through the SDKs."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import openai
import pytest

from proxy.simulator import SimulatorThread
from proxy.simulator.text import count_tokens

from .conftest import ANTHROPIC_MODEL, Control

MESSAGES: Any = [{"role": "user", "content": "hello"}]


def _chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **extra)


def _wait_until_idle(control: Control) -> None:
    deadline = time.monotonic() + 3
    while control.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert control.stats()["in_flight"] == 0


def test_429_is_a_rate_limit_error_with_retry_after(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(oai, extra_headers={"x-sim-fault": "429", "x-sim-retry-after": "0.05"})
    assert caught.value.response.headers["retry-after"] == "0.05"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as default:
        _chat(oai, extra_headers={"x-sim-fault": "429"})
    assert default.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize("fault", ["500", "503", "529"])
def test_server_faults_are_internal_server_errors(oai: openai.OpenAI, fault: str) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(oai, extra_headers={"x-sim-fault": fault})
    assert caught.value.status_code == int(fault)
    assert caught.value.type == "server_error"


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [("429", 429, "rate_limit_error"), ("500", 500, "api_error"), ("529", 529, "overloaded_error")],
)
def test_anthropic_faults_use_anthropic_errors(
    claude: anthropic.Anthropic, fault: str, status: int, error_type: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"x-sim-fault": fault},
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == error_type
    if status == 429:
        assert isinstance(caught.value, anthropic.RateLimitError)
        assert caught.value.response.headers["retry-after"] == "1"


def test_hang_times_out_without_blocking_other_requests(
    sim: SimulatorThread, oai: openai.OpenAI, control: Control
) -> None:
    with openai.OpenAI(
        base_url=sim.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=0.3
    ) as impatient:
        with pytest.raises(openai.APITimeoutError):
            _chat(impatient, extra_headers={"x-sim-fault": "hang"})
    assert _chat(oai).choices[0].message.content
    _wait_until_idle(control)


def test_drop_closes_the_connection_without_an_answer(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        _chat(oai, extra_headers={"x-sim-fault": "drop"})


def test_truncate_cuts_a_stream_before_its_end(oai: openai.OpenAI) -> None:
    received: list[Any] = []
    with (
        pytest.raises(openai.APIConnectionError),
        _chat(oai, stream=True, extra_headers={"x-sim-fault": "truncate"}) as stream,
    ):
        for chunk in stream:
            received.append(chunk)
    assert received
    assert all(c.choices[0].finish_reason is None for c in received)


def test_truncate_cuts_a_plain_body_short_of_its_content_length(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        _chat(oai, extra_headers={"x-sim-fault": "truncate"})


def test_garbage_and_wrong_content_type_answer_200_with_unusable_bodies(
    control: Control,
) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
    status, headers, payload = control.raw(
        "POST", "/v1/chat/completions", body, {"x-sim-fault": "garbage"}
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert payload.startswith(b'{"id": "chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(payload)
    status, headers, payload = control.raw(
        "POST", "/v1/chat/completions", body, {"x-sim-fault": "wrong_content_type"}
    )
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert payload.startswith(b"<html>")


def test_slow_delays_then_answers(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    completion = _chat(oai, extra_headers={"x-sim-fault": "slow", "x-sim-slow-ms": "200"})
    assert time.monotonic() - started >= 0.2
    assert completion.choices[0].message.content


def test_body_field_injects_a_fault_and_is_never_echoed(
    oai: openai.OpenAI, control: Control
) -> None:
    with pytest.raises(openai.InternalServerError):
        _chat(oai, extra_body={"sim_fault": "500"})
    body = {"model": "gpt-4.1", "input": "hi", "sim_fault": "slow", "sim_slow_ms": 1}
    status, _, payload = control.raw("POST", "/v1/responses", json.dumps(body).encode())
    assert status == 200
    assert b"sim_fault" not in payload


def test_queued_rule_hits_only_the_next_matching_requests(
    oai: openai.OpenAI, control: Control
) -> None:
    control.queue_fault(fault="500", count=2, path="/v1/chat/completions", model="gpt-4o")
    queued = control.queue_fault(fault="429", count=1, retry_after=0.05)
    assert queued["queued"] == 2
    # Other paths and models skip the first rule and take the second (FIFO over rules).
    with pytest.raises(openai.RateLimitError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    assert oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            _chat(oai)
    assert _chat(oai).choices
    assert control.call("GET", "/_sim/faults")["rules"] == []
    assert control.stats()["faults"] == {"500": 2, "429": 1}


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"fault": "explode"}, "unknown fault"),
        ({"fault": "500", "count": 0}, "count"),
        ({"fault": "429", "retry_after": "soon"}, "number"),
    ],
)
def test_malformed_rules_are_rejected(control: Control, rule: Any, reason: str) -> None:
    status, _, payload = control.raw("POST", "/_sim/faults", json.dumps(rule).encode())
    assert status == 400
    assert reason in json.loads(payload)["error"]


def test_unknown_fault_header_is_a_400_in_the_dialect(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(oai, extra_headers={"x-sim-fault": "explode"})
    assert "unknown fault" in caught.value.message


def test_latency_and_token_delay_slow_the_answer(oai: openai.OpenAI, control: Control) -> None:
    started = time.monotonic()
    _chat(oai, extra_headers={"x-sim-latency-ms": "150"})
    assert time.monotonic() - started >= 0.15
    control.call("POST", "/_sim/config", {"token_delay_ms": 10})
    started = time.monotonic()
    with _chat(oai, stream=True) as stream:
        chunks = list(stream)
    assert time.monotonic() - started >= 0.01 * (len(chunks) - 1)


def test_invalid_json_output_breaks_only_structured_answers(oai: openai.OpenAI) -> None:
    fault = {"x-sim-fault": "invalid_json_output"}
    broken = _chat(oai, response_format={"type": "json_object"}, extra_headers=fault)
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.choices[0].message.content or "")
    assert broken.usage is not None
    assert broken.usage.completion_tokens == count_tokens(broken.choices[0].message.content or "")
    plain = _chat(oai, extra_headers=fault)
    assert plain.choices[0].message.content == _chat(oai).choices[0].message.content
