"""Monthly usage from the SQL log (what quota counters are rebuilt from), on both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from shared.records import CallRecord, write_records
from shared.usage import Spent, month_of, month_start, month_usage, next_month_start


@pytest.mark.parametrize(
    ("at", "month"),
    [
        (datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "2026-11"),
        (datetime(2026, 12, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), "2026-11"),
        (datetime(2026, 12, 1, 0, 0), "2026-12"),  # naive: taken as UTC
    ],
)
def test_month_of_is_the_calendar_month_in_utc(at: datetime, month: str) -> None:
    assert month_of(at) == month


@pytest.mark.parametrize(
    ("month", "start", "next_start"),
    [
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_month_bounds(month: str, start: datetime, next_start: datetime) -> None:
    assert (month_start(month), next_month_start(month)) == (start, next_start)


@pytest.mark.parametrize("month", ["2026-1", "26-11", "2026/11", "2026-13"])
def test_malformed_months_are_refused(month: str) -> None:
    with pytest.raises(ValueError):
        month_start(month)


def record(at: datetime, **values: Any) -> CallRecord:
    values.setdefault("status", 200)
    return CallRecord(
        id=str(uuid.uuid4()),
        created_at=at,
        finished_at=at,
        dialect="openai",
        endpoint="chat.completions",
        latency_ms=1.0,
        **values,
    )


def test_month_usage_sums_every_scope_and_leaves_out_cache_hits(engine: Engine) -> None:
    owner = 900_000 + uuid.uuid4().int % 100_000  # ids no other test uses
    feb = datetime(2001, 2, 3, 12, tzinfo=UTC)
    mine: dict[str, Any] = {"tenant_id": owner, "user_id": owner}
    write_records(
        engine,
        [
            record(feb, key_id=owner, end_user="x", prompt_tokens=10, completion_tokens=5,
                   cost_usd=Decimal("0.00000123"), **mine),
            record(feb, key_id=owner + 1, prompt_tokens=3, completion_tokens=2,
                   cost_usd=Decimal("0.5"), **mine),
            record(feb, key_id=owner, prompt_tokens=99, completion_tokens=99,
                   cost_usd=Decimal(0), is_cached=True, **mine),
            record(datetime(2001, 3, 1, tzinfo=UTC), key_id=owner, prompt_tokens=7,
                   cost_usd=Decimal(1), **mine),
            record(datetime(2001, 1, 31, 23, 59, 59, tzinfo=UTC), key_id=owner,
                   prompt_tokens=7, cost_usd=Decimal(1), **mine),
            record(feb, status=401),  # refused before anyone was known: costs nothing
        ],
    )  # fmt: skip
    usage = month_usage(engine, "2001-02")
    assert usage.users == {owner: Spent(20, Decimal("0.50000123"))}
    assert usage.tenants == {owner: Spent(20, Decimal("0.50000123"))}
    assert usage.keys == {
        owner: Spent(15, Decimal("0.00000123")),
        owner + 1: Spent(5, Decimal("0.5")),
    }
    assert usage.end_users == {(owner, "x"): Spent(15, Decimal("0.00000123"))}
    assert usage.total == Spent(20, Decimal("0.50000123"))
    assert month_usage(engine, "2001-03").users == {owner: Spent(7, Decimal(1))}
