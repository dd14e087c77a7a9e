"""The top end users of a range, and spend by end user over time, without summing
every end user's days.

End users are many (hundreds of thousands of day rows a month), so ranking them all
for a month-long range is slow. ``usage_end_user_monthly`` gives each end user an
upper bound: what they spent in the months the range touches. Candidates are taken
in the order of that bound and their exact spend in the range summed from
``usage_end_user_daily`` (through its end-user index); once the N-th best exact
spend is at least the next candidate's bound, no one further down can overtake it
(the threshold algorithm), so the answer is exact. When that takes too many rounds
(spend spread evenly), every end user is summed instead.

An end user is told apart within their tenant: a (tenant id, end user) pair; "" is
the calls made without an end user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from shared.models import end_user_daily_table, end_user_monthly_table
from shared.rollup import as_utc, day_of, month_start_of
from shared.rollup_query import HOURLY_RANGE, Filters, owner_conditions, scope_for, series

CANDIDATES_PER_ROUND = 200
ROUNDS = 3
SPEND_COLUMNS = ("cost_usd", "prompt_tokens", "completion_tokens", "requests")

EndUser = tuple[int, str]  # (tenant id, end user)

_daily = end_user_daily_table
_monthly = end_user_monthly_table


@dataclass(frozen=True, slots=True)
class EndUserSpend:
    tenant_id: int
    end_user: str
    cost_usd: Decimal
    tokens: int
    requests: int


def _spend(row: Any) -> EndUserSpend:
    return EndUserSpend(
        int(row["tenant_id"]),
        str(row["end_user"]),
        Decimal(str(row["cost_usd"])),
        int(row["tokens"]),
        int(row["requests"]),
    )


def _daily_conditions(filters: Filters) -> list[ColumnElement[bool]]:
    return [
        _daily.c.day >= day_of(filters.start),
        _daily.c.day < as_utc(filters.end),
        *owner_conditions(_daily, filters),
    ]


def _sums() -> list[ColumnElement[Any]]:
    c = _daily.c
    return [
        func.sum(c.cost_usd).label("cost_usd"),
        func.sum(c.prompt_tokens + c.completion_tokens).label("tokens"),
        func.sum(c.requests).label("requests"),
    ]


def _exact(
    connection: Connection, filters: Filters, candidates: Sequence[EndUser]
) -> list[EndUserSpend]:
    """The range's spend of each candidate (those without any are left out)."""
    c = _daily.c
    query = (
        select(c.tenant_id, c.end_user, *_sums())
        .where(*_daily_conditions(filters), c.end_user.in_({name for _, name in candidates}))
        .group_by(c.tenant_id, c.end_user)
    )
    wanted = set(candidates)
    rows = connection.execute(query).mappings()
    return [_spend(row) for row in rows if (row["tenant_id"], row["end_user"]) in wanted]


def _ranked(spends: list[EndUserSpend], limit: int) -> list[EndUserSpend]:
    return sorted(spends, key=lambda s: (-s.cost_usd, s.end_user, s.tenant_id))[:limit]


def _everyone(connection: Connection, filters: Filters, limit: int) -> list[EndUserSpend]:
    c = _daily.c
    query = (
        select(c.tenant_id, c.end_user, *_sums())
        .where(*_daily_conditions(filters))
        .group_by(c.tenant_id, c.end_user)
        .order_by(func.sum(c.cost_usd).desc(), c.end_user, c.tenant_id)
        .limit(limit)
    )
    return [_spend(row) for row in connection.execute(query).mappings()]


def top_end_users(connection: Connection, filters: Filters, limit: int) -> list[EndUserSpend]:
    """The ``limit`` end users who spent most in the range (by cost), most first."""
    if filters.end - filters.start <= HOURLY_RANGE:  # a few days: summing them all is cheap
        return _everyone(connection, filters, limit)
    m = _monthly.c
    owners = replace(filters, models=())  # a bound over all models bounds one model too
    bound = func.sum(m.cost_usd).label("bound")
    bounds = (
        select(m.tenant_id, m.end_user, bound)
        .where(
            m.month >= month_start_of(filters.start),
            m.month < as_utc(filters.end),
            *owner_conditions(_monthly, owners),
        )
        .group_by(m.tenant_id, m.end_user)
        .order_by(bound.desc(), m.tenant_id, m.end_user)
    )
    best: list[EndUserSpend] = []
    for round_number in range(ROUNDS):
        offset = round_number * CANDIDATES_PER_ROUND
        batch = list(connection.execute(bounds.limit(CANDIDATES_PER_ROUND).offset(offset)))
        candidates = [(int(tenant_id), str(name)) for tenant_id, name, _ in batch]
        best = _ranked(best + _exact(connection, filters, candidates), limit)
        if len(batch) < CANDIDATES_PER_ROUND:
            return best  # every end user with spend in these months was looked at
        if len(best) == limit and best[-1].cost_usd >= Decimal(str(batch[-1][2])):
            return best
    return _everyone(connection, filters, limit)


def spend_by_day(connection: Connection, filters: Filters, top: int) -> list[dict[str, Any]]:
    """Cost, tokens and requests per day of the ``top`` end users, and of everyone
    else as group None. Rows: ``period``, ``group`` (an ``EndUser`` or None) and sums."""
    leaders = [(s.tenant_id, s.end_user) for s in top_end_users(connection, filters, top)]
    c = _daily.c
    query = (
        select(c.day, c.tenant_id, c.end_user, *_sums())
        .where(*_daily_conditions(filters), c.end_user.in_({name for _, name in leaders}))
        .group_by(c.day, c.tenant_id, c.end_user)
    )
    wanted = set(leaders)
    rows: list[dict[str, Any]] = []
    theirs: dict[datetime, tuple[Decimal, int, int]] = {}
    for row in connection.execute(query).mappings():
        if (row["tenant_id"], row["end_user"]) not in wanted:
            continue
        spend, day = _spend(row), as_utc(row["day"])
        rows.append(_row(day, (spend.tenant_id, spend.end_user), spend))
        cost, tokens, requests = theirs.get(day, (Decimal(0), 0, 0))
        theirs[day] = (cost + spend.cost_usd, tokens + spend.tokens, requests + spend.requests)
    everyone = scope_for(filters, SPEND_COLUMNS, granularity="day")
    c_all = everyone.table.c
    sums = {
        "cost_usd": c_all.cost_usd,
        "tokens": c_all.prompt_tokens + c_all.completion_tokens,
        "requests": c_all.requests,
    }
    for total in series(connection, everyone, None, sums):
        cost, tokens, requests = theirs.get(total["period"], (Decimal(0), 0, 0))
        rest = EndUserSpend(
            0,
            "",
            Decimal(str(total["cost_usd"])) - cost,
            int(total["tokens"]) - tokens,
            int(total["requests"]) - requests,
        )
        if rest.requests > 0:
            rows.append(_row(total["period"], None, rest))
    return sorted(rows, key=lambda row: row["period"])


def _row(day: datetime, group: EndUser | None, spend: EndUserSpend) -> dict[str, Any]:
    return {
        "period": day,
        "group": group,
        "cost_usd": spend.cost_usd,
        "tokens": spend.tokens,
        "requests": spend.requests,
    }
