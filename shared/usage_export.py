"""Usage per tenant, user, key or end user for a billing period: CSV, or JSON meter
events to feed a metered-billing system (``metergate usage export``).

Read from the usage rollups like ``shared.billing`` (never from raw records): per key
from ``shared.billing.billing_rows``, summed up to users and tenants; per end user from
``usage_end_user_daily``, so an end-user export covers whole UTC days. Calls refused
before a key was known are billed to no one and left out.

A meter event is one number for one customer and one period, in the shape Stripe's
billing meters and OpenMeter-style ingesters take::

    {"event_name": "metergate.cost_usd", "identifier": "mg-3f2a…",
     "timestamp": "2026-12-01T00:00:00+00:00",
     "payload": {"customer": "tenant:acme", "value": "12.34000000", ...}}

``identifier`` is derived from the period, the customer and the meter, so sending the
same export twice is deduplicated by the receiving system instead of billed twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any, Literal, get_args

from sqlalchemy import Engine, func, select

from shared.billing import BillingPeriod, BillingRow, billing_rows
from shared.models import Tenant, end_user_daily_table
from shared.pricing import COST_QUANTUM
from shared.rollup import as_utc, day_of
from shared.rollup_query import reading

Subject = Literal["tenant", "user", "key", "end_user"]
SUBJECTS: tuple[Subject, ...] = get_args(Subject)

# What a billing system meters: (meter name, the UsageRow field it reads).
METERS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("input_tokens", "prompt_tokens"),
    ("output_tokens", "completion_tokens"),
    ("cost_usd", "cost_usd"),
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One customer's usage in the period (``subject`` says what kind of customer)."""

    subject: Subject
    customer: str  # "tenant:NAME", "user:EMAIL", "key:PREFIX" or "end_user:TENANT/ID"
    tenant: str
    user: str  # "" for a tenant row
    key_prefix: str  # "" above key level
    end_user: str  # "" unless subject is end_user
    requests: int
    errors: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    response_cache_saved_usd: Decimal


_SUMS = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "response_cache_saved_usd",
)


def usage_rows(
    engine: Engine, period: BillingPeriod, by: Subject, tenant_ids: tuple[int, ...] = ()
) -> list[UsageRow]:
    """The period's usage per ``by``, ordered by tenant, user, key, end user."""
    if by == "end_user":
        return _end_user_rows(engine, period, tenant_ids)
    rows: dict[str, UsageRow] = {}
    for billed in billing_rows(engine, period, tenant_ids):
        row = _from_billing(billed, by)
        known = rows.get(row.customer)
        rows[row.customer] = row if known is None else _plus(known, row)
    return list(rows.values())


def _from_billing(billed: BillingRow, by: Subject) -> UsageRow:
    user = billed.user if by in ("user", "key") else ""
    key_prefix = billed.key_prefix if by == "key" else ""
    customer = {
        "tenant": f"tenant:{billed.tenant}",
        "user": f"user:{billed.user}",
        "key": f"key:{billed.key_prefix}",
    }[by]
    return UsageRow(
        by,
        customer,
        billed.tenant,
        user,
        key_prefix,
        "",
        **{name: getattr(billed, name) for name in _SUMS},
    )


def _plus(a: UsageRow, b: UsageRow) -> UsageRow:
    return replace(a, **{name: getattr(a, name) + getattr(b, name) for name in _SUMS})


def _end_user_rows(
    engine: Engine, period: BillingPeriod, tenant_ids: tuple[int, ...]
) -> list[UsageRow]:
    start, end = as_utc(period.start), as_utc(period.end)
    if day_of(start) != start or day_of(end) != end:
        raise ValueError("an end-user export covers whole UTC days")
    c = end_user_daily_table.c
    conditions = [c.day >= start, c.day < end, c.end_user != ""]
    if tenant_ids:
        conditions.append(c.tenant_id.in_(tenant_ids))
    usage = (
        select(c.tenant_id, c.end_user, *(func.sum(c[n]).label(n) for n in _SUMS))
        .where(*conditions)
        .group_by(c.tenant_id, c.end_user)
        .subquery("usage")
    )
    query = (
        select(usage, func.coalesce(Tenant.name, "").label("tenant"))
        .outerjoin(Tenant, Tenant.id == usage.c.tenant_id)
        .order_by("tenant", usage.c.end_user)
    )
    with reading(engine) as connection:
        found = list(connection.execute(query).mappings())
    return [
        UsageRow(
            "end_user",
            f"end_user:{row['tenant']}/{row['end_user']}",
            row["tenant"],
            "",
            "",
            row["end_user"],
            **{name: _number(name, row[name]) for name in _SUMS},
        )
        for row in found
    ]


def _number(name: str, value: Any) -> Any:
    # PostgreSQL sums integers as NUMERIC, SQLite sums money as REAL.
    if name.endswith("_usd"):
        return Decimal(str(value)).quantize(COST_QUANTUM)
    return int(value)


def usage_csv(rows: Iterable[UsageRow], period: BillingPeriod) -> str:
    """The rows as CSV, with the period in the first two columns."""
    buffer = io.StringIO()
    names = [f.name for f in fields(UsageRow)]
    writer = csv.DictWriter(buffer, ["period_start", "period_end", *names], lineterminator="\n")
    writer.writeheader()
    bounds = _bounds(period)
    for row in rows:
        writer.writerow({**bounds, **{name: getattr(row, name) for name in names}})
    return buffer.getvalue()


def meter_events(rows: Iterable[UsageRow], period: BillingPeriod) -> list[dict[str, Any]]:
    """One event per customer and meter (zero values left out), stamped at the period's
    end, with an identifier that is the same every time the same period is exported."""
    bounds = _bounds(period)
    events = []
    for row in rows:
        for meter, field in METERS:
            value = getattr(row, field)
            if not value:
                continue
            seed = f"{bounds['period_start']}|{bounds['period_end']}|{row.customer}|{meter}"
            events.append(
                {
                    "event_name": f"metergate.{meter}",
                    "identifier": "mg-" + hashlib.sha256(seed.encode()).hexdigest()[:32],
                    "timestamp": bounds["period_end"],
                    "payload": {
                        "customer": row.customer,
                        "value": str(value),
                        "subject": row.subject,
                        "tenant": row.tenant,
                        "user": row.user or None,
                        "key_prefix": row.key_prefix or None,
                        "end_user": row.end_user or None,
                        **bounds,
                    },
                }
            )
    return events


def _bounds(period: BillingPeriod) -> dict[str, str]:
    return {
        "period_start": as_utc(period.start).isoformat(),
        "period_end": as_utc(period.end).isoformat(),
    }


def tenant_ids_named(engine: Engine, names: Iterable[str]) -> tuple[int, ...]:
    """The ids of these tenants; ValueError naming any that does not exist."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return ()
    with engine.connect() as connection:
        found = dict(
            connection.execute(select(Tenant.name, Tenant.id).where(Tenant.name.in_(wanted))).all()
        )
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"no such tenant: {', '.join(missing)}")
    return tuple(found[name] for name in wanted)


__all__ = [
    "METERS",
    "SUBJECTS",
    "Subject",
    "UsageRow",
    "meter_events",
    "tenant_ids_named",
    "usage_csv",
    "usage_rows",
]
