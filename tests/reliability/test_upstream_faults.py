"""Under gunicorn: a client gone mid-stream cancels the upstream call and is billed for the
part it got; upstream garbage, truncation, wrong content types and hangs are clear
502 / 504 answers, each recorded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import anthropic
import httpx2
import openai
import pytest

from proxy.quota import to_units
from proxy.quota_store import RedisQuotaStore
from shared.usage import month_of
from tests.reliability.conftest import UPSTREAM_TIMEOUT_SECONDS, Stack, records_by_client_id
from tests.reliability.services import sim_configure, sim_stats
from tests.reliability.traffic import (
    ANTHROPIC_MODEL,
    DIALECTS,
    OPENAI_MODEL,
    Outcome,
    body_for,
    error_shape_problems,
    new_request_id,
    send,
)
from tests.support import seed_accounts, wait_for

TOKEN_DELAY_SECONDS = 0.15
QUESTION = "Tell me a long story about failures."


@pytest.fixture()
def slow_stream(stack: Stack) -> Iterator[None]:
    sim_configure(stack.simulator.base_url, token_delay_ms=TOKEN_DELAY_SECONDS * 1000)
    try:
        yield
    finally:
        sim_configure(stack.simulator.base_url, token_delay_ms=0)


def read_three_events_and_leave(stack: Stack, dialect: str, key: str, request_id: str) -> None:
    """The real SDK starts a stream, takes three events, and closes the connection."""
    headers = {"x-request-id": request_id}
    messages: list[dict[str, str]] = [{"role": "user", "content": QUESTION}]
    if dialect == "openai":
        with openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0) as oai:
            stream = oai.chat.completions.create(
                model=OPENAI_MODEL,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                max_tokens=400,
                extra_headers=headers,
            )
            for number, _ in enumerate(stream):
                if number == 2:
                    break
            stream.close()
        return
    with anthropic.Anthropic(base_url=stack.base_url, api_key=key, max_retries=0) as claude:
        with claude.messages.stream(
            model=ANTHROPIC_MODEL,
            max_tokens=400,
            messages=messages,  # type: ignore[arg-type]
            extra_headers=headers,
        ) as events:
            for number, _ in enumerate(events):
                if number == 2:
                    break


@pytest.mark.parametrize("dialect", DIALECTS)
def test_client_gone_mid_stream_cancels_upstream_and_pays_for_the_part_sent(
    stack: Stack, slow_stream: None, dialect: str
) -> None:
    acct = seed_accounts(stack.engine)
    request_id = new_request_id("gone")
    read_three_events_and_leave(stack, dialect, acct.key, request_id)
    left = time.monotonic()
    # Cancelled: the upstream call ends long before the story would have.
    wait_for(lambda: sim_stats(stack.simulator.base_url)["in_flight"] == 0, timeout=10)
    assert time.monotonic() - left < 3.0

    record = wait_for(lambda: records_by_client_id(stack.engine, [request_id]).get(request_id))
    assert (record.status, record.error_code, record.is_stream) == (
        499,
        "client_disconnected",
        True,
    )
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd > 0
    assert record.latency_ms < 3000 + 400 * TOKEN_DELAY_SECONDS * 1000 / 4
    # Billed: the partial usage is what the quota counters hold for the key.
    client = stack.redis.client()
    try:
        counters = RedisQuotaStore(client).counters(
            month_of(datetime.now(UTC)), f"key:{acct.key_id}"
        )
    finally:
        client.close()
    assert counters.tokens == record.prompt_tokens + record.completion_tokens
    assert counters.usd == to_units(record.cost_usd)
    assert counters.held_tokens == 0


# (fault, stream, status the client gets, code recorded, status recorded). Failures after
# a stream's 200 arrive as an error event in the stream (both SDKs raise on it).
FAULTS = [
    ("garbage", False, 502, "upstream_invalid", 502),
    ("garbage", True, 200, "upstream_unreachable", 502),
    ("truncate", False, 502, "upstream_unreachable", 502),
    ("truncate", True, 200, "upstream_unreachable", 502),
    ("wrong_content_type", False, 502, "upstream_invalid", 502),
    ("wrong_content_type", True, 502, "upstream_invalid", 502),
    ("hang", False, 504, "upstream_timeout", 504),
    ("hang", True, 504, "upstream_timeout", 504),
    ("drop", False, 502, "upstream_unreachable", 502),
    ("drop", True, 502, "upstream_unreachable", 502),
]


def test_upstream_garbage_and_hangs_are_clear_502_504_and_recorded(stack: Stack) -> None:
    acct = seed_accounts(stack.engine)
    cases = [(dialect, *row) for dialect in DIALECTS for row in FAULTS]

    def call(case: tuple[str, str, bool, int, str, int]) -> Outcome:
        dialect, fault, stream, *_ = case
        body = body_for(dialect, QUESTION, stream=stream, sim_fault=fault)
        with httpx2.Client(base_url=stack.base_url, timeout=30) as client:
            return send(client, dialect, acct.key, body, request_id=new_request_id(fault))

    with ThreadPoolExecutor(len(cases)) as pool:
        outcomes = list(pool.map(call, cases))

    records = records_by_client_id(stack.engine, [o.request_id for o in outcomes])
    wait_for(
        lambda: (
            len(records_by_client_id(stack.engine, [o.request_id for o in outcomes]))
            == len(outcomes)
        ),
        timeout=30,
    )
    records = records_by_client_id(stack.engine, [o.request_id for o in outcomes])
    for case, outcome in zip(cases, outcomes, strict=True):
        dialect, fault, stream, status, code, recorded = case
        assert outcome.status == status, (case, outcome.text)
        if status == 200:
            assert outcome.has_error_event, (case, outcome.text)
        else:
            assert not error_shape_problems(outcome), (case, error_shape_problems(outcome))
            if dialect == "openai":
                assert outcome.json()["error"]["code"] == code, case
        if fault == "hang":
            assert UPSTREAM_TIMEOUT_SECONDS <= outcome.seconds < UPSTREAM_TIMEOUT_SECONDS + 5
        record = records[outcome.request_id]
        assert (record.status, record.error_code) == (recorded, code), case
