"""Spend against quotas and caps this month, and where the month will end.

Read from the usage rollups. Month-to-date figures follow the quota rules of
``shared.usage``: calendar months in UTC, cache hits free, tokens = prompt +
completion of calls that went upstream. The scopes and their limits are the
proxy's: the global cap, each tenant's cap, each user's own limit (else its
tier's), and each key's own limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared.accounts import get_global_monthly_usd
from shared.analytics import Labels
from shared.models import ApiKey, Tenant, Tier, User
from shared.rollup import as_utc, day_of, hour_of
from shared.rollup_query import Filters, owner_conditions, reading, scope_for, sums_of
from shared.usage import month_of, month_start, next_month_start

RUN_RATE_WINDOW = timedelta(days=7)
MIN_RUN_RATE_WINDOW = timedelta(hours=1)


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

    The time range of ``filters`` is not used: the month is the one ``now`` is in, and
    the run rate is taken over the days since ``RUN_RATE_WINDOW`` ago (from midnight).
    """
    now = as_utc(now)
    month = month_of(now)
    to_now = hour_of(now) + timedelta(hours=1)  # the rollup's grain: the current hour counts
    month_so_far = scope_for(replace(filters, start=month_start(month), end=to_now), ["cost_usd"])
    recent = scope_for(replace(filters, start=now - RUN_RATE_WINDOW, end=to_now), ["cost_usd"])
    table = recent.table
    time = table.c.hour if "hour" in table.c else table.c.day
    with reading(engine) as connection:
        spent_sums = sums_of(connection, month_so_far, {"usd": month_so_far.table.c.cost_usd})
        recent_sums = sums_of(connection, recent, {"usd": table.c.cost_usd})
        spent, recent_usd = float(spent_sums["usd"]), float(recent_sums["usd"])
        # A newer owner's rate is taken over the time since its first call, not a full window.
        first = connection.scalar(select(func.min(time)).where(*owner_conditions(table, filters)))
    with Session(engine) as session:
        cap_usd, cap_scope = _applicable_cap(session, filters)
    window_start = day_of(now - RUN_RATE_WINDOW)
    recent_from = max(window_start, as_utc(first)) if first is not None else now
    window_days = max(now - recent_from, MIN_RUN_RATE_WINDOW) / timedelta(days=1)
    return Forecast(
        month=month,
        spent_usd=spent,
        daily_rate_usd=recent_usd / window_days,
        forecast_usd=forecast_month_end(spent, recent_usd, recent_from, now),
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
    spent = _month_spend(engine, month_of(now))
    uses: list[QuotaUse] = []
    with Session(engine) as session:
        if not (filters.tenant_ids or filters.user_ids or filters.key_ids):
            cap = get_global_monthly_usd(session)
            if cap is not None:
                usd = sum((s[1] for s in spent["tenant"].values()), Decimal(0))
                uses.append(QuotaUse("global", "deployment", "USD", float(usd), float(cap)))
        limits = _limits(session, filters)
    for scope, owner_id, usd_limit, token_limit in limits:
        tokens, usd = spent[scope].get(owner_id, (0, Decimal(0)))
        name = labels.name(scope, owner_id)  # type: ignore[arg-type]
        if usd_limit is not None:
            uses.append(QuotaUse(scope, name, "USD", float(usd), float(usd_limit)))
        if token_limit is not None:
            uses.append(QuotaUse(scope, name, "tokens", float(tokens), float(token_limit)))
    return sorted(uses, key=lambda use: (-use.fraction, use.scope, use.name))


def _month_spend(engine: Engine, month: str) -> dict[str, dict[int, tuple[int, Decimal]]]:
    """(tokens, USD) of the month per tenant, user and key id, in one pass over a rollup."""
    owners = ("tenant_id", "user_id", "key_id")
    whole_month = Filters(month_start(month), next_month_start(month))
    scope = scope_for(whole_month, (*owners, "prompt_tokens", "completion_tokens", "cost_usd"))
    c = scope.table.c
    query = (
        select(
            c.tenant_id,
            c.user_id,
            c.key_id,
            func.sum(c.prompt_tokens + c.completion_tokens),
            func.sum(c.cost_usd),
        )
        .where(*scope.conditions)
        .group_by(c.tenant_id, c.user_id, c.key_id)
    )
    spent: dict[str, dict[int, tuple[int, Decimal]]] = {"tenant": {}, "user": {}, "key": {}}
    with reading(engine) as connection:
        for tenant_id, user_id, key_id, tokens, usd in connection.execute(query):
            amount = (int(tokens or 0), Decimal(str(usd or 0)))
            for scope_name, owner in (("tenant", tenant_id), ("user", user_id), ("key", key_id)):
                before = spent[scope_name].get(owner, (0, Decimal(0)))
                spent[scope_name][owner] = (before[0] + amount[0], before[1] + amount[1])
    return spent


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
