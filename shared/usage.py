"""Monthly usage from the SQL log: the ledger the proxy's quota counters are rebuilt from.

Periods are calendar months in UTC, named ``"2026-11"``. A call counts toward the
month it started in (``request_records.created_at``). Cache hits cost nothing against
quotas, so they are left out. Money is summed as ``Decimal`` (``Numeric(18, 8)``
in SQL), so a rebuild equals, to the last 1e-8 USD, the live counters it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine, false, func, select
from sqlalchemy.orm import Session

from shared.models import RequestRecord
from shared.pricing import COST_QUANTUM


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens (prompt + completion) and USD used in one month by one scope."""

    tokens: int = 0
    usd: Decimal = Decimal(0)


@dataclass(slots=True)
class MonthUsage:
    """A month's usage per user, key, end user (of a key), tenant, and in total."""

    month: str
    users: dict[int, Spent] = field(default_factory=dict)
    keys: dict[int, Spent] = field(default_factory=dict)
    end_users: dict[tuple[int, str], Spent] = field(default_factory=dict)
    tenants: dict[int, Spent] = field(default_factory=dict)
    total: Spent = field(default_factory=Spent)


def month_of(at: datetime) -> str:
    """The month ``at`` falls in, in UTC (naive datetimes are taken as UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}"


def month_start(month: str) -> datetime:
    """Midnight UTC on the 1st of ``month`` (``"YYYY-MM"``); ValueError if malformed."""
    year, _, number = month.partition("-")
    if len(year) != 4 or len(number) != 2:
        raise ValueError(f"a month is written YYYY-MM, not {month!r}")
    return datetime(int(year), int(number), 1, tzinfo=UTC)


def next_month_start(month: str) -> datetime:
    """Midnight UTC on the 1st of the month after ``month``: when its quotas reset."""
    start = month_start(month)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def month_usage(engine: Engine, month: str) -> MonthUsage:
    """Sum tokens and cost of the month's non-cached calls, grouped by every quota scope."""
    start, end = month_start(month), next_month_start(month)
    tokens = func.coalesce(
        func.sum(RequestRecord.prompt_tokens + RequestRecord.completion_tokens), 0
    )
    usd = func.coalesce(func.sum(RequestRecord.cost_usd), 0)
    in_month = (
        RequestRecord.created_at >= start,
        RequestRecord.created_at < end,
        RequestRecord.is_cached == false(),
    )
    usage = MonthUsage(month=month)
    with Session(engine) as session:
        for column, target in (
            (RequestRecord.user_id, usage.users),
            (RequestRecord.key_id, usage.keys),
            (RequestRecord.tenant_id, usage.tenants),
        ):
            query = select(column, tokens, usd).where(*in_month, column.is_not(None))
            for owner, spent_tokens, spent_usd in session.execute(query.group_by(column)):
                target[int(str(owner))] = _spent(spent_tokens, spent_usd)
        by_end_user = (
            select(RequestRecord.key_id, RequestRecord.end_user, tokens, usd)
            .where(
                *in_month, RequestRecord.key_id.is_not(None), RequestRecord.end_user.is_not(None)
            )
            .group_by(RequestRecord.key_id, RequestRecord.end_user)
        )
        for key_id, end_user, spent_tokens, spent_usd in session.execute(by_end_user):
            usage.end_users[(int(str(key_id)), str(end_user))] = _spent(spent_tokens, spent_usd)
        total_tokens, total_usd = session.execute(select(tokens, usd).where(*in_month)).one()
        usage.total = _spent(total_tokens, total_usd)
    return usage


def _spent(tokens: object, usd: object) -> Spent:
    # SQLite sums NUMERIC as floats: quantize back to the ledger's 1e-8 USD.
    return Spent(int(str(tokens)), Decimal(str(usd)).quantize(COST_QUANTUM))
