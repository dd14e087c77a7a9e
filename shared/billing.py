"""Usage and cost per tenant, user and key for a billing period, as rows or CSV.

Read from the usage rollups, so a period starts and ends on whole UTC hours
(a month: ``month_period("2026-11")``). One row per key that was used in the
period, with its user and tenant; calls refused before a key was known are not
billed to anyone and are left out. Money keeps the ledger's 1e-8 USD precision.
Used by the console's Export page; a CLI or admin API can call ``billing_csv``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select

from shared.models import ApiKey, Tenant, User, usage_hourly_table, usage_key_daily_table
from shared.pricing import COST_QUANTUM
from shared.rollup import as_utc, day_of, hour_of
from shared.rollup_query import reading
from shared.usage import month_start, next_month_start


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    start: datetime  # inclusive, UTC, on the hour
    end: datetime  # exclusive

    def __post_init__(self) -> None:
        for at in (self.start, self.end):
            if hour_of(at) != as_utc(at):
                raise ValueError(f"a billing period starts and ends on the hour, not at {at}")
        if self.end <= self.start:
            raise ValueError("a billing period ends after it starts")


def month_period(month: str) -> BillingPeriod:
    """The calendar month ``"YYYY-MM"`` in UTC; ValueError if malformed."""
    return BillingPeriod(month_start(month), next_month_start(month))


@dataclass(frozen=True, slots=True)
class BillingRow:
    tenant_id: int
    tenant: str
    user_id: int
    user: str
    key_id: int
    key_prefix: str
    key_name: str
    requests: int
    errors: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    response_cache_saved_usd: Decimal
    prompt_cache_saved_usd: Decimal


_SUMMED = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "response_cache_saved_usd",
    "prompt_cache_saved_usd",
)


def billing_rows(
    engine: Engine, period: BillingPeriod, tenant_ids: tuple[int, ...] = ()
) -> list[BillingRow]:
    """One row per key used in ``period`` (of ``tenant_ids`` if given), by tenant, user, key."""
    # Whole days are read from the daily rollup of keys, other periods from the hourly one.
    start, end = as_utc(period.start), as_utc(period.end)
    is_whole_days = day_of(start) == start and day_of(end) == end
    table, grain = (usage_key_daily_table, "day") if is_whole_days else (usage_hourly_table, "hour")
    c = table.c
    time = c[grain]
    conditions = [time >= start, time < end, c.key_id != 0]
    if tenant_ids:
        conditions.append(c.tenant_id.in_(tenant_ids))
    usage = (
        select(c.tenant_id, c.user_id, c.key_id, *(func.sum(c[n]).label(n) for n in _SUMMED))
        .where(*conditions)
        .group_by(c.tenant_id, c.user_id, c.key_id)
        .subquery("usage")
    )
    query = (
        select(
            usage,
            func.coalesce(Tenant.name, "").label("tenant"),
            func.coalesce(User.email, "").label("user"),
            func.coalesce(ApiKey.prefix, "").label("key_prefix"),
            func.coalesce(ApiKey.name, "").label("key_name"),
        )
        .outerjoin(Tenant, Tenant.id == usage.c.tenant_id)
        .outerjoin(User, User.id == usage.c.user_id)
        .outerjoin(ApiKey, ApiKey.id == usage.c.key_id)
        .order_by("tenant", "user", usage.c.key_id)
    )
    with reading(engine) as connection:
        rows = list(connection.execute(query).mappings())
    billed = []
    for row in rows:
        values: dict[str, Any] = {f.name: row[f.name] for f in fields(BillingRow)}
        for name in _SUMMED:  # PostgreSQL sums integers as NUMERIC, SQLite money as REAL
            values[name] = _money(values[name]) if name.endswith("_usd") else int(values[name])
        billed.append(BillingRow(**values))
    return billed


def _money(value: object) -> Decimal:
    # SQLite sums NUMERIC as floats: quantize back to the ledger's 1e-8 USD.
    return Decimal(str(value)).quantize(COST_QUANTUM)


def billing_csv(engine: Engine, period: BillingPeriod, tenant_ids: tuple[int, ...] = ()) -> str:
    """The period's billing rows as CSV, with the period in the first two columns."""
    buffer = io.StringIO()
    names = [f.name for f in fields(BillingRow)]
    writer = csv.DictWriter(buffer, ["period_start", "period_end", *names], lineterminator="\n")
    writer.writeheader()
    bounds = {
        "period_start": as_utc(period.start).isoformat(),
        "period_end": as_utc(period.end).isoformat(),
    }
    for row in billing_rows(engine, period, tenant_ids):
        values = asdict(row)
        for name, value in values.items():
            if isinstance(value, Decimal):
                values[name] = format(value, "f")
        writer.writerow(bounds | values)
    return buffer.getvalue()
