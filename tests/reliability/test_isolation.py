"""Tenant isolation across every surface a gateway key reaches, on gunicorn (two workers
sharing Redis): tenant A's key never gets tenant B's cache entries, records, usage,
stored answers or feedback, and is refused by the admin API."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import httpx2
import openai
import pytest
from sqlalchemy import select

from proxy.quota import from_units
from proxy.quota_store import RedisQuotaStore
from shared.accounts import Limits
from shared.models import RequestRecord, User
from shared.usage import Spent, month_of, month_usage
from tests.reliability.conftest import Stack
from tests.reliability.traffic import OPENAI_MODEL, Outcome, body_for, send
from tests.support import Accounts, seed_accounts, wait_for

LIMITS = Limits(
    rpm=1000,
    monthly_tokens=10**7,
    monthly_usd=Decimal(100),
    cache_ttl_seconds=300,
    models=[OPENAI_MODEL, "claude-haiku-4-5"],
)


def tenant_of(stack: Stack, acct: Accounts) -> int:
    with stack.engine.connect() as connection:
        return int(connection.scalar(select(User.tenant_id).where(User.email == acct.user)))


def test_a_key_never_reaches_another_tenants_data(stack: Stack) -> None:
    a, b = seed_accounts(stack.engine, limits=LIMITS), seed_accounts(stack.engine, limits=LIMITS)
    question = "What is the capital of the tenant boundary?"
    with httpx2.Client(base_url=stack.base_url, timeout=30) as client:
        # Cache: the same question from B and then A is two answers, each tenant's own.
        for dialect, stream in (("openai", False), ("anthropic", True)):
            body = body_for(dialect, question, stream=stream)
            b_first = send(client, dialect, b.key, body)
            a_first = send(client, dialect, a.key, body)
            b_again = send(client, dialect, b.key, body)
            a_again = send(client, dialect, a.key, body)
            calls = (b_first, a_first, b_again, a_again)
            assert [o.headers["x-metergate-cache"] for o in calls] == ["miss", "miss", "hit", "hit"]
            b_answer, a_answer, b_hit, a_hit = (answer_id(o) for o in calls)
            assert (b_hit, a_hit) == (b_answer, a_answer) and a_answer != b_answer, dialect

        # Records: A reusing B's request id gets a record of its own; B's stays B's.
        b_call = send(client, "openai", b.key, body_for("openai", "B's secret plan"))
        a_call = send(
            client,
            "openai",
            a.key,
            body_for("openai", "A's question"),
            request_id=b_call.request_id,
        )
        assert a_call.status == 200
        assert a_call.headers["x-metergate-record-id"] != b_call.headers["x-metergate-record-id"]
        records = wait_for(lambda: records_of(stack, b_call.request_id, expect=2))
        owners = {r.key_id: r.tenant_id for r in records}
        assert owners == {a.key_id: tenant_of(stack, a), b.key_id: tenant_of(stack, b)}

        # Feedback: A cannot score B's record, only its own.
        for key, record_id, status in (
            (a.key, b_call.headers["x-metergate-record-id"], 404),
            (a.key, a_call.headers["x-metergate-record-id"], 200),
        ):
            scored = client.post(
                "/v1/feedback",
                json={"request_id": record_id, "score": 0.1},
                headers={"authorization": f"Bearer {key}"},
            )
            assert scored.status_code == status, scored.text

        # Usage: B's rate window counts B's calls only.
        before = int(
            send(client, "openai", b.key, body_for("openai", "count me")).headers[
                "x-ratelimit-remaining-requests"
            ]
        )
        for n in range(3):
            send(client, "openai", a.key, body_for("openai", f"A only {n}"))
        after = int(
            send(client, "openai", b.key, body_for("openai", "count me too")).headers[
                "x-ratelimit-remaining-requests"
            ]
        )
        assert after == before - 1

        # The admin API is not for gateway keys.
        admin = client.get("/admin/v1/tenants", headers={"authorization": f"Bearer {a.key}"})
        assert admin.status_code == 403, admin.text

    # Quota counters: each key's hold only its own usage, equal to its own ledger.
    month = month_of(datetime.now(UTC))
    redis_client = stack.redis.client()
    try:
        store = RedisQuotaStore(redis_client)
        for acct in (a, b):
            counters = store.counters(month, f"key:{acct.key_id}")
            assert wait_for(
                lambda acct=acct, counters=counters: (
                    month_usage(stack.engine, month).keys.get(acct.key_id)
                    == Spent(counters.tokens, from_units(counters.usd))
                )
            )
    finally:
        redis_client.close()


def records_of(stack: Stack, request_id: str, expect: int) -> list[RequestRecord] | None:
    with stack.engine.connect() as connection:
        rows = list(
            connection.execute(
                select(RequestRecord).where(RequestRecord.client_request_id == request_id)
            ).all()
        )
    return rows if len(rows) == expect else None  # type: ignore[return-value]


def test_a_key_never_reaches_another_tenants_stored_answers(stack: Stack) -> None:
    a, b = seed_accounts(stack.engine), seed_accounts(stack.engine)
    base = stack.base_url + "/v1"
    with (
        openai.OpenAI(base_url=base, api_key=a.key, max_retries=0) as as_a,
        openai.OpenAI(base_url=base, api_key=b.key, max_retries=0) as as_b,
    ):
        stored = as_a.responses.create(model=OPENAI_MODEL, input="Remember this for me.")
        assert as_a.responses.retrieve(stored.id).id == stored.id
        with pytest.raises(openai.NotFoundError):
            as_b.responses.retrieve(stored.id)
        with pytest.raises(openai.NotFoundError):
            as_b.responses.delete(stored.id)
        with pytest.raises(openai.NotFoundError):
            as_b.responses.create(
                model=OPENAI_MODEL, input="And what did I say?", previous_response_id=stored.id
            )
        assert as_a.responses.retrieve(stored.id).id == stored.id  # B's tries changed nothing


def answer_id(outcome: Outcome) -> str:
    """The provider's id of the answer (whole or streamed)."""
    found = re.search(r'"id":\s*"((?:chatcmpl|msg)[^"]+)"', outcome.text)
    assert found, outcome.text[:300]
    return found.group(1)
