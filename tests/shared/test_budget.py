"""Month-end forecast and spend against quotas and caps, read from the rollup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine

from shared import accounts
from shared.accounts import Limits
from shared.analytics import Filters, load_labels
from shared.budget import QuotaUse, forecast_month_end, month_forecast, quota_use
from shared.db import make_engine, transaction, upgrade
from shared.records import write_records
from tests.shared.usage_records import call, fresh_owner

NOW = datetime(2033, 1, 15, 12, 30, tzinfo=UTC)  # 16 days and 11.5 hours left in January


@pytest.mark.parametrize(
    ("spent", "recent", "recent_from", "now", "forecast"),
    [
        # $70 over the last 7 days: $10 a day for the 20 days left in June.
        (100.0, 70.0, datetime(2032, 6, 4, tzinfo=UTC), datetime(2032, 6, 11, tzinfo=UTC), 300.0),
        # The last instant of a month: nothing left to add.
        (
            5.0,
            7.0,
            datetime(2032, 12, 24, tzinfo=UTC),
            datetime(2033, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
            5.0,
        ),
        # A window shorter than an hour is taken as an hour: $1 an hour for 24 hours.
        (
            0.0,
            1.0,
            datetime(2032, 2, 28, 23, 50, tzinfo=UTC),
            datetime(2032, 2, 29, tzinfo=UTC),
            24.0,
        ),
        # No spend lately: the month ends where it is.
        (42.0, 0.0, datetime(2032, 3, 1, tzinfo=UTC), datetime(2032, 3, 8, tzinfo=UTC), 42.0),
    ],
)
def test_forecast_adds_the_recent_daily_rate_for_the_rest_of_the_month(
    spent: float, recent: float, recent_from: datetime, now: datetime, forecast: float
) -> None:
    assert forecast_month_end(spent, recent, recent_from, now) == pytest.approx(forecast, abs=1e-6)


def test_forecast_window_is_at_least_an_hour() -> None:
    now = datetime(2032, 4, 30, 23, tzinfo=UTC)  # one hour left
    assert forecast_month_end(0.0, 2.0, now, now) == pytest.approx(2.0)


def test_month_forecast_reads_this_month_and_the_last_seven_days(engine: Engine) -> None:
    owner = fresh_owner()
    mine = {"tenant_id": owner, "user_id": owner, "key_id": owner}
    records = [call(datetime(2033, 1, 2, tzinfo=UTC), cost_usd=Decimal(10), **mine)]
    records += [  # $1 a day for the last 7 days
        call(datetime(2033, 1, 9, tzinfo=UTC) + timedelta(days=d), cost_usd=Decimal(1), **mine)
        for d in range(7)
    ]
    records.append(call(datetime(2033, 2, 1, tzinfo=UTC), cost_usd=Decimal(100), **mine))
    records.append(call(datetime(2032, 12, 31, tzinfo=UTC), cost_usd=Decimal(50), **mine))
    write_records(engine, records)

    filters = Filters(NOW - timedelta(days=1), NOW, tenant_ids=(owner,))
    forecast = month_forecast(engine, filters, NOW)

    assert forecast.month == "2033-01"
    assert forecast.spent_usd == pytest.approx(17.0)
    # The 7-day window starts at midnight (Jan 8): it holds Jan 9..15's $7.
    window_days = (NOW - datetime(2033, 1, 8, tzinfo=UTC)) / timedelta(days=1)
    assert forecast.daily_rate_usd == pytest.approx(7.0 / window_days)
    remaining_days = (datetime(2033, 2, 1, tzinfo=UTC) - NOW) / timedelta(days=1)
    assert forecast.forecast_usd == pytest.approx(17.0 + 7.0 * remaining_days / window_days)
    assert (forecast.cap_usd, forecast.cap_scope) == (None, "")  # no tenant row: no cap


def test_a_new_owner_s_rate_counts_from_its_first_call(engine: Engine) -> None:
    owner = fresh_owner()
    write_records(engine, [call(NOW - timedelta(days=2), tenant_id=owner, cost_usd=Decimal(4))])
    forecast = month_forecast(engine, Filters(NOW, NOW, tenant_ids=(owner,)), NOW)
    since_first_day = (NOW - datetime(2033, 1, 13, tzinfo=UTC)) / timedelta(days=1)
    assert forecast.daily_rate_usd == pytest.approx(4 / since_first_day, rel=1e-6)


def test_quota_use_shows_every_limited_scope_fullest_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'quota.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with transaction(engine) as session:
            tenant = accounts.create_tenant(session, "acme", Decimal(100))
            accounts.create_tier(session, "team", Limits(monthly_usd=Decimal(20)))
            user = accounts.create_user(session, "ann@acme.test", "acme", "team")
            key, _ = accounts.create_key(session, "ann@acme.test", name="ci")
            other, _ = accounts.create_key(session, "ann@acme.test", name="spare")
            accounts.set_key_limits(session, str(key.id), Limits(monthly_tokens=1000))
            accounts.set_global_monthly_usd(session, Decimal(400))
            ids = {"tenant_id": tenant.id, "user_id": user.id}
        write_records(
            engine,
            [
                call(
                    NOW - timedelta(days=3),
                    key_id=key.id,
                    cost_usd=Decimal(5),
                    prompt_tokens=600,
                    completion_tokens=150,
                    **ids,
                ),
                call(NOW - timedelta(days=1), key_id=other.id, cost_usd=Decimal(3), **ids),
                call(NOW, key_id=key.id, is_cached=True, prompt_tokens=999, **ids),  # free
                call(NOW - timedelta(days=20), key_id=key.id, cost_usd=Decimal(99), **ids),
            ],
        )
        labels = load_labels(engine)
        uses = quota_use(engine, Filters(NOW, NOW), NOW, labels)
        assert uses == [
            QuotaUse("key", f"ci ({key.prefix}…)", "tokens", 750.0, 1000.0),
            QuotaUse("user", "ann@acme.test", "USD", 8.0, 20.0),
            QuotaUse("tenant", "acme", "USD", 8.0, 100.0),
            QuotaUse("global", "deployment", "USD", 8.0, 400.0),
        ]
        assert uses[0].fraction == pytest.approx(0.75)
        only_key = quota_use(engine, Filters(NOW, NOW, key_ids=(key.id,)), NOW, labels)
        assert [(u.scope, u.unit) for u in only_key] == [("key", "tokens")]
        forecast = month_forecast(engine, Filters(NOW, NOW, tenant_ids=(tenant.id,)), NOW)
        assert (forecast.cap_usd, forecast.cap_scope) == (100.0, "tenant acme")
        overall = month_forecast(engine, Filters(NOW, NOW), NOW)
        assert (overall.cap_usd, overall.cap_scope) == (400.0, "global")
    finally:
        engine.dispose()
