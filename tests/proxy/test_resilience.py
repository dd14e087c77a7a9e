"""Resilient upstream, end to end: the real SDKs -> the proxy -> a simulator injecting faults.

The module runs its own simulator (its fault queue and counters are this module's
alone) and its own proxy with fast retries, a breaker that opens after 3 failures and
cools down in 0.5 s, and a 0.3 s first-byte timeout. Every test makes its own models,
so breaker and headroom state (per provider + upstream model) never leak between tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.breaker import BreakerState
from proxy.resilience import Resilience
from proxy.simulator import SimulatorThread
from shared import accounts
from shared.catalogue import ModelEntry
from shared.db import transaction
from shared.models import ModelPrice, RequestRecord
from shared.pricing import Usage, price_usage
from tests.support import (
    Accounts,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
PATHS = {"openai": CHAT_PATH, "anthropic": MESSAGES_PATH}
COOLDOWN_SECONDS = 0.5
TIMEOUT_SECONDS = 0.3


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimulatorThread]:
    with SimulatorThread() as sim:
        yield sim


@pytest.fixture(scope="module")
def gateway(
    pg_url: str, upstream: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    settings = settings_for(
        pg_url,
        upstream.base_url,
        Path(tmp_path_factory.mktemp("resilience")),
        retry_max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        breaker_failure_threshold=3,
        breaker_cooldown_seconds=COOLDOWN_SECONDS,
        upstream_first_byte_timeout_seconds=TIMEOUT_SECONDS,
        upstream_read_timeout_seconds=TIMEOUT_SECONDS,
        upstream_deadline_seconds=10.0,
    )
    with running_proxy(settings) as server:
        yield server


class Sim:
    """The module simulator's controls."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def queue(self, fault: str, model: str, count: int = 1, **extra: Any) -> None:
        rule = {"fault": fault, "model": model, "count": count, **extra}
        self.http.post("/_sim/faults", json=rule).raise_for_status()

    def calls(self, path: str, model: str) -> int:
        stats = self.http.get("/_sim/stats").raise_for_status().json()
        return int(stats["by_path_model"].get(path, {}).get(model, 0))


@pytest.fixture()
def sim(upstream: SimulatorThread) -> Iterator[Sim]:
    control = Sim(upstream.base_url)
    try:
        yield control
    finally:
        control.http.delete("/_sim/faults").raise_for_status()
        control.http.close()


@pytest.fixture(scope="module")
def acct(gateway: ProxyServer) -> Accounts:
    """One key for the module: what is under test is per model, not per key."""
    return seed_accounts(gateway.state.engine)


def add_models(gateway: ProxyServer, provider: str, count: int) -> list[str]:
    """``count`` fresh models of ``provider``; each falls back to the ones after it.
    Prices differ per model (input n, output 2n USD/Mtok) so a cost names its model."""
    names = [f"res-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    with transaction(gateway.state.engine) as session:
        for index, name in reversed(list(enumerate(names))):
            accounts.upsert_model(
                session,
                name,
                provider=provider,
                upstream_model=None,
                input_per_mtok=Decimal(index + 1),
                output_per_mtok=Decimal(2 * (index + 1)),
                fallbacks=names[index + 1 :],
            )
    gateway.state.config.clear()  # visible now, not at the next config poll
    return names


def model_entry(gateway: ProxyServer, name: str) -> ModelEntry:
    with Session(gateway.state.engine) as session:
        row = session.get(ModelPrice, name)
        assert row is not None
        return ModelEntry.from_row(row)


def records(gateway: ProxyServer, request_id: str) -> list[RequestRecord]:
    gateway.flush()
    with Session(gateway.state.engine) as session:
        query = select(RequestRecord).where(RequestRecord.client_request_id == request_id)
        return list(session.scalars(query))


def the_record(gateway: ProxyServer, request_id: str) -> RequestRecord:
    found = records(gateway, request_id)
    assert len(found) == 1, f"{len(found)} records for one call"
    return found[0]


def outcomes(record: RequestRecord) -> list[Any]:
    return [(a["model"], a.get("status") or a.get("error")) for a in record.attempts or []]


def resilience_of(gateway: ProxyServer) -> Resilience:
    return gateway.state.pipeline.gateway.resilience


def openai_client(gateway: ProxyServer, acct: Accounts) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=acct.key, max_retries=0)


def anthropic_client(gateway: ProxyServer, acct: Accounts) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=acct.key, max_retries=0)


def call(gateway: ProxyServer, acct: Accounts, dialect: str, model: str, rid: str) -> Any:
    """One whole call in ``dialect``; returns the parsed answer or raises the SDK's error."""
    headers = {"x-request-id": rid}
    if dialect == "openai":
        with openai_client(gateway, acct) as client:
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": rid}], extra_headers=headers
            )
    with anthropic_client(gateway, acct) as claude:
        return claude.messages.create(
            model=model,
            max_tokens=50,
            messages=[{"role": "user", "content": rid}],
            extra_headers=headers,
        )


def failed_call(
    gateway: ProxyServer, acct: Accounts, dialect: str, model: str, rid: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, body) of a call that must fail."""
    error_type = openai.APIStatusError if dialect == "openai" else anthropic.APIStatusError
    with pytest.raises(error_type) as caught:
        call(gateway, acct, dialect, model, rid)
    response = caught.value.response
    return response.status_code, dict(response.headers), response.json()


def rid() -> str:
    return f"res-{uuid.uuid4()}"


# -- retries ----------------------------------------------------------------------------


def test_429s_are_retried_no_sooner_than_retry_after(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    [model] = add_models(gateway, "openai", 1)
    sim.queue("429", model, count=2, retry_after=0.2)
    request_id = rid()
    started = time.monotonic()
    completion = call(gateway, acct, "openai", model, request_id)
    elapsed = time.monotonic() - started
    assert completion.choices[0].message.content
    assert elapsed >= 0.4  # two waits of the upstream's retry-after, longer than any backoff
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(model, 429), (model, 429), (model, 200)]
    assert [a.get("retry_after") for a in record.attempts or []] == [0.2, 0.2, None]
    assert (record.status, record.answered_model) == (200, model)
    assert sim.calls(CHAT_PATH, model) == 3


def test_500s_then_success_leave_one_record_with_every_attempt(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    [model] = add_models(gateway, "anthropic", 1)
    sim.queue("500", model, count=2)
    request_id = rid()
    message = call(gateway, acct, "anthropic", model, request_id)
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(model, 500), (model, 500), (model, 200)]
    assert all(a["latency_ms"] >= 0 for a in record.attempts or [])
    assert record.status == 200 and record.completion_tokens == message.usage.output_tokens
    assert record.upstream_latency_ms is not None


def test_timeouts_are_retried(gateway: ProxyServer, sim: Sim, acct: Accounts) -> None:
    [model] = add_models(gateway, "openai", 1)
    sim.queue("hang", model)
    request_id = rid()
    started = time.monotonic()
    call(gateway, acct, "openai", model, request_id)
    assert time.monotonic() - started >= TIMEOUT_SECONDS
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(model, "timeout"), (model, 200)]
    assert (record.attempts or [])[0]["latency_ms"] >= TIMEOUT_SECONDS * 1000 * 0.9


@pytest.mark.parametrize(
    ("dialect", "fault", "status", "code", "retry_after"),
    [
        ("openai", "500", 502, "upstream_error", None),
        ("openai", "503", 503, "upstream_error", None),
        ("openai", "429", 503, "upstream_rate_limited", "0.05"),
        ("openai", "hang", 504, "upstream_timeout", None),
        ("openai", "drop", 502, "upstream_unreachable", None),
        ("anthropic", "529", 503, "overloaded_error", None),
        ("anthropic", "500", 502, "api_error", None),
        ("anthropic", "hang", 504, "timeout_error", None),
    ],
)
def test_exhausted_retries_refuse_in_the_callers_dialect(
    gateway: ProxyServer,
    sim: Sim,
    acct: Accounts,
    dialect: str,
    fault: str,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    [model] = add_models(gateway, dialect, 1)
    sim.queue(fault, model, count=3, retry_after=0.05)
    request_id = rid()
    got_status, headers, body = failed_call(gateway, acct, dialect, model, request_id)
    got_code = body["error"]["code"] if dialect == "openai" else body["error"]["type"]
    assert (got_status, got_code) == (status, code)
    assert headers.get("retry-after") == retry_after
    record = the_record(gateway, request_id)
    assert len(record.attempts or []) == 3 and record.status == status
    assert record.answered_model is None
    assert sim.calls(PATHS[dialect], model) == 3


# -- fallbacks --------------------------------------------------------------------------


def test_fallback_answers_and_prices_when_the_primary_keeps_failing(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    primary, fallback = add_models(gateway, "openai", 2)
    sim.queue("500", primary, count=3)
    request_id = rid()
    completion = call(gateway, acct, "openai", primary, request_id)
    assert completion.model == fallback
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(primary, 500)] * 3 + [(fallback, 200)]
    assert (record.model, record.answered_model, record.upstream_model) == (
        primary,
        fallback,
        fallback,
    )
    usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert record.cost_usd == price_usage(usage, model_entry(gateway, fallback))
    assert record.cost_usd != price_usage(usage, model_entry(gateway, primary))


def test_fallbacks_the_key_may_not_use_are_skipped(gateway: ProxyServer, sim: Sim) -> None:
    primary, fallback = add_models(gateway, "anthropic", 2)
    acct = seed_accounts(gateway.state.engine, key_models=[primary])
    sim.queue("529", primary, count=3)
    status, _, _ = failed_call(gateway, acct, "anthropic", primary, rid())
    assert status == 503
    assert sim.calls(MESSAGES_PATH, fallback) == 0


# -- the breaker ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_breaker_opens_fails_fast_and_a_probe_closes_it(
    gateway: ProxyServer, sim: Sim, acct: Accounts, dialect: str
) -> None:
    [model] = add_models(gateway, dialect, 1)
    breakers = resilience_of(gateway).breakers
    key = (dialect, model)
    sim.queue("500", model, count=3)
    assert failed_call(gateway, acct, dialect, model, rid())[0] == 502
    assert breakers.state(key) is BreakerState.OPEN

    request_id = rid()
    status, headers, body = failed_call(gateway, acct, dialect, model, request_id)
    error = body["error"]["code"] if dialect == "openai" else body["error"]["type"]
    assert (status, error) == (
        503,
        "upstream_unavailable" if dialect == "openai" else "overloaded_error",
    )
    assert headers["retry-after"] == "1"
    assert sim.calls(PATHS[dialect], model) == 3  # no upstream call while open
    assert outcomes(the_record(gateway, request_id)) == [(model, "circuit_open")]

    wait_for(lambda: breakers.state(key) is BreakerState.HALF_OPEN, timeout=5)
    request_id = rid()
    call(gateway, acct, dialect, model, request_id)
    assert outcomes(the_record(gateway, request_id)) == [(model, 200)]
    assert breakers.state(key) is BreakerState.CLOSED
    assert sim.calls(PATHS[dialect], model) == 4


def test_open_breaker_sends_calls_straight_to_the_fallback(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    primary, fallback = add_models(gateway, "openai", 2)
    sim.queue("503", primary, count=3)
    call(gateway, acct, "openai", primary, rid())  # opens the primary's breaker
    request_id = rid()
    assert call(gateway, acct, "openai", primary, request_id).model == fallback
    assert outcomes(the_record(gateway, request_id)) == [
        (primary, "circuit_open"),
        (fallback, 200),
    ]
    assert sim.calls(CHAT_PATH, primary) == 3


# -- streams ----------------------------------------------------------------------------


def test_openai_stream_is_retried_before_its_first_byte(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    [model] = add_models(gateway, "openai", 1)
    sim.queue("500", model, count=2)
    request_id = rid()
    with openai_client(gateway, acct) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "stream it"}],
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(model, 500), (model, 500), (model, 200)]
    assert record.status == 200 and record.completion_tokens > 0


def test_anthropic_stream_survives_a_dropped_connection_and_falls_back(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    primary, fallback = add_models(gateway, "anthropic", 2)
    sim.queue("drop", primary, count=1)
    sim.queue("529", primary, count=2)
    request_id = rid()
    with (
        anthropic_client(gateway, acct) as claude,
        claude.messages.stream(
            model=primary,
            max_tokens=50,
            messages=[{"role": "user", "content": "stream it"}],
            extra_headers={"x-request-id": request_id},
        ) as stream,
    ):
        message = stream.get_final_message()
    assert message.model == fallback and message.content
    record = the_record(gateway, request_id)
    assert outcomes(record) == [
        (primary, "unreachable"),
        (primary, 529),
        (primary, 529),
        (fallback, 200),
    ]
    assert record.answered_model == fallback
    assert record.cost_usd == price_usage(
        Usage(message.usage.input_tokens, message.usage.output_tokens),
        model_entry(gateway, fallback),
    )


def test_stream_broken_after_its_first_byte_is_not_retried(
    gateway: ProxyServer, sim: Sim, acct: Accounts
) -> None:
    [model] = add_models(gateway, "openai", 1)
    sim.queue("truncate", model)
    request_id = rid()
    with openai_client(gateway, acct) as client, pytest.raises(openai.APIError):
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "stream it"}],
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        for _ in stream:
            pass
    record = the_record(gateway, request_id)
    assert outcomes(record) == [(model, 200)]
    assert record.error_code == "upstream_unreachable"
    assert sim.calls(CHAT_PATH, model) == 1


# -- headroom ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_upstream_rate_limit_headroom_is_tracked(
    gateway: ProxyServer, sim: Sim, acct: Accounts, dialect: str
) -> None:
    [model] = add_models(gateway, dialect, 1)
    call(gateway, acct, dialect, model, rid())
    budgets = resilience_of(gateway).headroom.budgets((dialect, model))
    assert {"requests", "tokens"} <= set(budgets)
    assert 0 < budgets["requests"].remaining < 10_000
    assert resilience_of(gateway).headroom.wait_seconds((dialect, model)) == 0.0
