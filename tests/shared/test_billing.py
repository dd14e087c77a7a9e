"""The billing export: usage and cost per tenant, user and key for a period, as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from shared import accounts
from shared.billing import BillingPeriod, billing_csv, billing_rows, month_period
from shared.db import transaction
from shared.records import write_records
from tests.shared.usage_records import call
from tests.support import seed_accounts

MARCH = datetime(2033, 3, 1, tzinfo=UTC)


def test_month_period_is_the_calendar_month_in_utc() -> None:
    period = month_period("2033-12")
    assert (period.start, period.end) == (
        datetime(2033, 12, 1, tzinfo=UTC),
        datetime(2034, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (MARCH + timedelta(minutes=30), MARCH + timedelta(days=1)),  # not on the hour
        (MARCH, MARCH),  # empty
        (MARCH + timedelta(days=2), MARCH),  # backwards
    ],
)
def test_a_period_must_be_whole_hours_forwards(start: datetime, end: datetime) -> None:
    with pytest.raises(ValueError):
        BillingPeriod(start, end)


def test_billing_csv_has_a_row_per_key_with_its_month_sums(engine: Engine) -> None:
    first, second = seed_accounts(engine), seed_accounts(engine)
    with transaction(engine) as session:
        tenant = accounts.get_tenant(session, first.tenant)
        user = accounts.get_user(session, first.user)
        spare, _ = accounts.create_key(session, first.user, name="spare")
        other = accounts.get_user(session, second.user)
        ids = {"tenant_id": tenant.id, "user_id": user.id}
        other_ids = {"tenant_id": other.tenant_id, "user_id": other.id}
    write_records(
        engine,
        [
            call(
                MARCH,
                key_id=first.key_id,
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=Decimal("0.00012345"),
                **ids,
            ),
            call(
                MARCH + timedelta(days=30, hours=23),
                key_id=first.key_id,
                prompt_tokens=1,
                cache_read_tokens=7,
                cache_saved_usd=Decimal("0.00000003"),
                cost_usd=Decimal("0.1"),
                **ids,
            ),
            call(
                MARCH + timedelta(days=3),
                key_id=spare.id,
                is_cached=True,
                prompt_tokens=40,
                cache_saved_usd=Decimal("0.02"),
                **ids,
            ),
            call(
                MARCH + timedelta(days=4),
                key_id=spare.id,
                status=429,
                error_code="rate_limit_exceeded",
                refusal_reason="rate_limit",
                **ids,
            ),
            call(MARCH + timedelta(days=31), key_id=first.key_id, cost_usd=Decimal(9), **ids),
            call(MARCH - timedelta(seconds=1), key_id=first.key_id, cost_usd=Decimal(9), **ids),
            call(
                MARCH + timedelta(days=5),
                key_id=second.key_id,
                cost_usd=Decimal("1.5"),
                **other_ids,
            ),
            call(MARCH, status=401, error_code="invalid_api_key"),  # nobody's: not billed
        ],
    )
    period = month_period("2033-03")
    text = billing_csv(engine, period, (tenant.id, other.tenant_id))

    rows = list(csv.DictReader(io.StringIO(text)))
    expected = [
        (first.tenant, first.user, first.key_id),
        (first.tenant, first.user, spare.id),
        (second.tenant, second.user, second.key_id),
    ]
    assert [(r["tenant"], r["user"], int(r["key_id"])) for r in rows] == sorted(expected)
    by_key = {int(r["key_id"]): r for r in rows}
    main, cached, theirs = by_key[first.key_id], by_key[spare.id], by_key[second.key_id]
    assert main["period_start"] == "2033-03-01T00:00:00+00:00"
    assert main["period_end"] == "2033-04-01T00:00:00+00:00"
    assert (main["requests"], main["prompt_tokens"], main["completion_tokens"]) == ("2", "11", "5")
    assert (main["cost_usd"], main["cache_read_tokens"]) == ("0.10012345", "7")
    assert main["prompt_cache_saved_usd"] == "0.00000003"
    assert main["key_prefix"] and main["key_name"] == "test"
    assert (cached["requests"], cached["cache_hits"], cached["errors"]) == ("2", "1", "1")
    assert (cached["cost_usd"], cached["response_cache_saved_usd"]) == ("0.00000000", "0.02000000")
    assert cached["prompt_tokens"] == "0"  # a cache hit's tokens are not billed
    assert theirs["cost_usd"] == "1.50000000"


def test_billing_rows_of_a_quiet_period_are_empty(engine: Engine) -> None:
    period = BillingPeriod(datetime(1999, 1, 1, tzinfo=UTC), datetime(1999, 1, 2, tzinfo=UTC))
    assert billing_rows(engine, period) == []
    assert (
        billing_csv(engine, period).splitlines()[0].startswith("period_start,period_end,tenant_id")
    )


def test_a_period_of_hours_reads_the_hourly_rollup(engine: Engine) -> None:
    acct = seed_accounts(engine)
    with transaction(engine) as session:
        user = accounts.get_user(session, acct.user)
        ids = {"tenant_id": user.tenant_id, "user_id": user.id, "key_id": acct.key_id}
    write_records(
        engine,
        [
            call(MARCH + timedelta(hours=1), cost_usd=Decimal("0.5"), **ids),
            call(MARCH + timedelta(hours=3, minutes=59), cost_usd=Decimal("0.25"), **ids),
            call(MARCH + timedelta(hours=4), cost_usd=Decimal(7), **ids),
        ],
    )
    period = BillingPeriod(MARCH + timedelta(hours=1), MARCH + timedelta(hours=4))
    (row,) = billing_rows(engine, period, (user.tenant_id,))
    assert (row.requests, row.cost_usd) == (2, Decimal("0.75"))
