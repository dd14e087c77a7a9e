"""Varied request records for rollup and dashboard tests (seeded, so runs repeat)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from shared.models import LATENCY_EDGES_MS
from shared.records import CallRecord

MODELS = (("gpt-4o-mini", "openai"), ("claude-3-5-haiku", "anthropic"), ("gpt-4o", "openai"))
ERRORS = (
    (429, "rate_limit_exceeded", "rate_limit"),
    (429, "insufficient_quota", "quota"),
    (400, "content_policy_violation", "screening"),
    (502, "upstream_error", None),
    (504, None, None),  # an error without a code: rolled up as http_504
)


def fresh_owner() -> int:
    """A tenant / user / key id base no other test uses."""
    return 1_000_000 + uuid.uuid4().int % 1_000_000_000


def call(at: datetime, **values: object) -> CallRecord:
    """One successful uncached call unless ``values`` say otherwise."""
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "created_at": at,
        "finished_at": at,
        "dialect": "openai",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 100.0,
    }
    fields.update(values)
    return CallRecord.model_validate(fields)


def varied_records(owner: int, start: datetime, count: int, seed: int = 7) -> list[CallRecord]:
    """Calls over a few hours and days by three keys of ``owner``: cache hits, prompt-cache
    savings, errors with and without codes, refusals, missing latencies, latencies on
    bucket edges, end users, an anonymous call, and a created_at in another time zone."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        at = start + timedelta(minutes=rng.randrange(0, 60 * 50), seconds=rng.random())
        if index % 17 == 0:
            at = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
        model, provider = MODELS[index % len(MODELS)]
        key = owner + index % 3
        values: dict[str, object] = {
            "tenant_id": owner,
            "user_id": owner + (key - owner) % 2,
            "key_id": key,
            "model": model,
            "provider": provider,
            "end_user": None if index % 4 == 0 else f"end-user-{index % 7}",
            "prompt_tokens": rng.randrange(1, 2000),
            "completion_tokens": rng.randrange(0, 800),
            "cost_usd": Decimal(rng.randrange(1, 10**6)) / Decimal(10**8),
            "latency_ms": _latency(rng, index),
            "upstream_latency_ms": None if index % 5 == 0 else _latency(rng, index + 1),
            "overhead_ms": rng.uniform(0.05, 40.0),
            "ttft_ms": rng.uniform(20, 3000) if index % 2 else None,
        }
        if index % 6 == 1:  # response cache hit: free, saves the original cost
            values.update(is_cached=True, cost_usd=Decimal(0))
            values["cache_saved_usd"] = Decimal(rng.randrange(1, 10**5)) / Decimal(10**8)
        elif index % 6 == 2:  # provider prompt caching
            values["cache_read_tokens"] = rng.randrange(1, 1000)
            values["cache_write_tokens"] = rng.randrange(0, 100)
            values["cache_saved_usd"] = Decimal(rng.randrange(1, 10**5)) / Decimal(10**8)
        if index % 9 == 4:
            status, code, reason = ERRORS[(index // 9) % len(ERRORS)]
            values.update(status=status, error_code=code, refusal_reason=reason)
            values.update(cost_usd=Decimal(0), completion_tokens=0)
        if index == 5:
            values.update(tenant_id=None, user_id=None, key_id=None, status=401)
            values.update(error_code="invalid_api_key", model=None, provider=None)
        records.append(call(at, **values))
    return records


def _latency(rng: random.Random, index: int) -> float:
    if index % 11 == 3:  # exactly on a bucket edge, where off-by-one errors live
        return LATENCY_EDGES_MS[rng.randrange(len(LATENCY_EDGES_MS))]
    return rng.lognormvariate(6.0, 1.2)


START = datetime(2031, 3, 30, 22, 0, tzinfo=UTC)
