"""Spend against quotas and caps this month, and where the month will end.

Read from the hourly usage rollup. Month-to-date figures follow the quota rules of
``shared.usage``: calendar months in UTC, cache hits free, tokens = prompt +
completion of calls that went upstream. The scopes and their limits are the
proxy's: the global cap, each tenant's cap, each user's own limit (else its
tier's), and each key's own limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, select
from sqlalchemy.orm import Session

from shared.accounts import get_global_monthly_usd
from shared.analytics import Filters, Labels, owner_conditions
from shared.models import ApiKey, Tenant, Tier, User, usage_hourly_table
from shared.rollup import as_utc, hour_of
from shared.usage import month_of, month_start, next_month_start

RUN_RATE_WINDOW = timedelta(days=7)
MIN_RUN_RATE_WINDOW = timedelta(hours=1)

_hourly = usage_hourly_table


def forecast_month_end(
    spent_usd: float, recent_usd: float, recent_from: datetime, now: datetime
) -> float:
    """Month-end spend if the rate of ``recent_usd`` (spent from ``recent_from`` to
    ``now``, at least an hour's worth) goes on until the month ends (UTC)."""
    now = as_utc(now)
    window = max(now - as_utc(recent_from), MIN_RUN_RATE_WINDOW)
    remaining = next_month_start(month_of(now)) - now
    return spent_usd + recent_usd * (remaining / window)


@dataclass(frozen=True, slots=True)
class Forecast:
    month: str
    spent_usd: float  # month to date
    daily_rate_usd: float  # over the last RUN_RATE_WINDOW, or since the first call if later
    forecast_usd: float
    cap_usd: float | None  # the cap that applies to the filtered spend, if one does
    cap_scope: str  # "global", "tenant <name>" or ""


def month_forecast(engine: Engine, filters: Filters, now: datetime) -> Forecast:
    """This month's spend for the filtered owners and models, its run rate and forecast.

    The time range of ``filters`` is not used: the month is the one ``now`` is in.
    """
    now = as_utc(now)
    month = month_of(now)
    owners = owner_conditions(_hourly, filters)
    cost = func.coalesce(func.sum(_hourly.c.cost_usd), 0)
    window_start = hour_of(now - RUN_RATE_WINDOW)
    with Session(engine) as session:
        spent = session.scalar(
            select(cost).where(*owners, _hourly.c.hour >= month_start(month), _hourly.c.hour < now)
        )
        recent = session.scalar(
            select(cost).where(*owners, _hourly.c.hour >= window_start, _hourly.c.hour < now)
        )
        # A newer owner's rate is taken over the time since its first call, not a full window.
        first = session.scalar(select(func.min(_hourly.c.hour)).where(*owners))
        cap_usd, cap_scope = _applicable_cap(session, filters)
    recent_from = max(window_start, as_utc(first)) if first is not None else now
    window_days = max(now - recent_from, MIN_RUN_RATE_WINDOW) / timedelta(days=1)
    return Forecast(
        month=month,
        spent_usd=float(spent or 0),
        daily_rate_usd=float(recent or 0) / window_days,
        forecast_usd=forecast_month_end(float(spent or 0), float(recent or 0), recent_from, now),
        cap_usd=cap_usd,
        cap_scope=cap_scope,
    )


def _applicable_cap(session: Session, filters: Filters) -> tuple[float | None, str]:
    if filters.user_ids or filters.key_ids or filters.models:
        return None, ""
    if not filters.tenant_ids:
        cap = get_global_monthly_usd(session)
        return (None, "") if cap is None else (float(cap), "global")
    if len(filters.tenant_ids) == 1:
        tenant = session.get(Tenant, filters.tenant_ids[0])
        if tenant is not None and tenant.monthly_usd is not None:
            return float(tenant.monthly_usd), f"tenant {tenant.name}"
    return None, ""


@dataclass(frozen=True, slots=True)
class QuotaUse:
    scope: str  # global, tenant, user, key
    name: str
    unit: str  # "USD" or "tokens"
    spent: float
    limit: float

    @property
    def fraction(self) -> float:
        """Spent over limit (1.0 or more: the scope's calls are refused)."""
        return self.spent / self.limit if self.limit > 0 else 1.0


def quota_use(engine: Engine, filters: Filters, now: datetime, labels: Labels) -> list[QuotaUse]:
    """Month-to-date use of every scope with a monthly USD or token limit, fullest first.

    Owner filters narrow the scopes shown; the global cap shows only without them.
    """
    month = month_of(now)
    in_month = [_hourly.c.hour >= month_start(month), _hourly.c.hour < next_month_start(month)]
    uses: list[QuotaUse] = []
    with Session(engine) as session:
        spent = {
            scope: _month_spend(session, column, in_month)
            for scope, column in (
                ("tenant", _hourly.c.tenant_id),
                ("user", _hourly.c.user_id),
                ("key", _hourly.c.key_id),
            )
        }
        if not (filters.tenant_ids or filters.user_ids or filters.key_ids):
            cap = get_global_monthly_usd(session)
            if cap is not None:
                usd = sum((s[1] for s in spent["tenant"].values()), Decimal(0))
                uses.append(QuotaUse("global", "deployment", "USD", float(usd), float(cap)))
        for scope, owner_id, usd_limit, token_limit in _limits(session, filters):
            tokens, usd = spent[scope].get(owner_id, (0, Decimal(0)))
            name = labels.name(scope, owner_id)  # type: ignore[arg-type]
            if usd_limit is not None:
                uses.append(QuotaUse(scope, name, "USD", float(usd), float(usd_limit)))
            if token_limit is not None:
                uses.append(QuotaUse(scope, name, "tokens", float(tokens), float(token_limit)))
    return sorted(uses, key=lambda use: (-use.fraction, use.scope, use.name))


def _month_spend(
    session: Session, column: Any, in_month: list[ColumnElement[bool]]
) -> dict[int, tuple[int, Decimal]]:
    query = (
        select(
            column,
            func.sum(_hourly.c.prompt_tokens + _hourly.c.completion_tokens),
            func.sum(_hourly.c.cost_usd),
        )
        .where(*in_month, column != 0)
        .group_by(column)
    )
    return {
        int(owner): (int(tokens or 0), Decimal(str(usd or 0)))
        for owner, tokens, usd in session.execute(query)
    }


def _limits(
    session: Session, filters: Filters
) -> list[tuple[str, int, Decimal | None, int | None]]:
    """(scope, id, monthly USD, monthly tokens) of every tenant, user and key with a limit."""
    limits: list[tuple[str, int, Decimal | None, int | None]] = []
    tenants = select(Tenant.id, Tenant.monthly_usd).where(Tenant.monthly_usd.is_not(None))
    users = select(
        User.id,
        func.coalesce(User.monthly_usd, Tier.monthly_usd),
        func.coalesce(User.monthly_tokens, Tier.monthly_tokens),
        User.tenant_id,
    ).join(Tier, User.tier_id == Tier.id)
    keys = (
        select(ApiKey.id, ApiKey.monthly_usd, ApiKey.monthly_tokens, User.tenant_id, User.id)
        .join(User, ApiKey.user_id == User.id)
        .where(ApiKey.revoked_at.is_(None))
    )
    if filters.tenant_ids:
        tenants = tenants.where(Tenant.id.in_(filters.tenant_ids))
        users = users.where(User.tenant_id.in_(filters.tenant_ids))
        keys = keys.where(User.tenant_id.in_(filters.tenant_ids))
    if filters.user_ids:
        users = users.where(User.id.in_(filters.user_ids))
        keys = keys.where(User.id.in_(filters.user_ids))
    if filters.key_ids:
        keys = keys.where(ApiKey.id.in_(filters.key_ids))
    if not (filters.user_ids or filters.key_ids):
        limits += [("tenant", i, usd, None) for i, usd in session.execute(tenants)]
    if not filters.key_ids:
        limits += [
            ("user", i, usd, tokens)
            for i, usd, tokens, _ in session.execute(users)
            if usd is not None or tokens is not None
        ]
    limits += [
        ("key", i, usd, tokens)
        for i, usd, tokens, _, _ in session.execute(keys)
        if usd is not None or tokens is not None
    ]
    return limits
