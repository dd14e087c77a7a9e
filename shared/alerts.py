"""Budget and spend-spike alerts: what has crossed a line, read from the usage rollups.

Two kinds, each named by a key that is unique per scope, line and period, so that
``shared.webhooks`` delivers each exactly once:

- **budget**: a monthly USD limit's spend (calendar months, UTC) at or past a
  threshold (``METERGATE_ALERT_THRESHOLDS_PERCENT``, 50 / 80 / 100 % by default),
  for the deployment's global cap, each tenant's cap, each user's budget (its own,
  else its tier's) and each key's own budget.
  Key: ``budget:<scope>:<id>:<YYYY-MM>:<percent>``. A limit of 0 alerts nothing (every
  call is refused anyway); a limit changed within the month does not re-send a
  threshold already sent that month.
- **spike**: the current hour's spend, globally and per tenant, at least
  ``alert_spike_factor`` times the average hourly spend of the previous
  ``alert_spike_baseline_days`` whole days (UTC, today left out), and at least
  ``alert_spike_min_usd``.
  Key: ``spike:<scope>:<id>:<YYYY-MM-DDTHH>``: one per scope and hour.

Spend comes from the rollups ``write_records`` keeps (``usage_key_daily`` and
``usage_hourly``), never from the request path. Cache hits cost nothing, as in quotas.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared.accounts import get_global_monthly_usd
from shared.models import (
    ApiKey,
    Tenant,
    Tier,
    User,
    usage_daily_table,
    usage_hourly_table,
    usage_key_daily_table,
)
from shared.rollup import day_of, hour_of
from shared.usage import month_of, month_start, next_month_start

CENT = Decimal("0.01")
QUANTUM = Decimal("0.00000001")  # the ledger's precision (SQLite sums NUMERIC as floats)


@dataclass(frozen=True, slots=True)
class SpikeRule:
    factor: float = 3.0
    min_usd: float = 10.0
    baseline_days: int = 7


@dataclass(frozen=True, slots=True)
class Alert:
    """One line crossed. ``key`` names it uniquely within its period."""

    key: str
    kind: str  # "budget" or "spike"
    scope: str  # "global", "tenant", "user" or "key"
    scope_id: int | None
    scope_name: str
    period: str  # "2026-11" (budget) or "2026-11-30T19" (spike, the hour in UTC)
    spent_usd: Decimal
    limit_usd: Decimal | None = None  # budget: the monthly limit
    threshold_percent: int | None = None  # budget: the line crossed
    baseline_usd: Decimal | None = None  # spike: average hourly spend before the hour

    @property
    def text(self) -> str:
        who = "the deployment" if self.scope == "global" else f"{self.scope} {self.scope_name}"
        if self.kind == "budget":
            return (
                f":warning: metergate: {who} has spent ${_usd(self.spent_usd)} of its "
                f"${_usd(self.limit_usd)} monthly budget in {self.period} "
                f"({self.threshold_percent}% threshold reached)."
            )
        return (
            f":chart_with_upwards_trend: metergate: spend spike for {who}: "
            f"${_usd(self.spent_usd)} in the hour {self.period}:00 UTC, against "
            f"${_usd(self.baseline_usd)} an hour on average before."
        )

    def payload(self) -> dict[str, Any]:
        """Slack-compatible JSON (``text`` and ``blocks``) with the same facts in
        machine-readable form under ``metergate``."""
        return {
            "text": self.text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": self.text}},
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"alert `{self.key}`"}],
                },
            ],
            "metergate": {
                "alert_key": self.key,
                "kind": self.kind,
                "scope": self.scope,
                "scope_id": self.scope_id,
                "scope_name": self.scope_name,
                "period": self.period,
                "spent_usd": str(self.spent_usd),
                "limit_usd": None if self.limit_usd is None else str(self.limit_usd),
                "threshold_percent": self.threshold_percent,
                "baseline_hourly_usd": (
                    None if self.baseline_usd is None else str(self.baseline_usd)
                ),
            },
        }


def _usd(value: Decimal | None) -> str:
    return "?" if value is None else str(value.quantize(CENT))


def evaluate(
    engine: Engine, now: datetime, thresholds_percent: Sequence[int], spike: SpikeRule
) -> list[Alert]:
    """Every budget threshold crossed this month and every spike this hour, as of ``now``."""
    return budget_alerts(engine, now, thresholds_percent) + spike_alerts(engine, now, spike)


# -- budgets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Limit:
    scope: str
    scope_id: int | None
    name: str
    monthly_usd: Decimal


def budget_alerts(engine: Engine, now: datetime, thresholds_percent: Sequence[int]) -> list[Alert]:
    month = month_of(now)
    spent = _month_spend(engine, month)
    alerts = []
    for limit in _limits(engine):
        if limit.monthly_usd <= 0:
            continue
        used = spent.get((limit.scope, limit.scope_id), Decimal(0))
        for percent in thresholds_percent:
            if used * 100 >= limit.monthly_usd * percent:
                scope_id = "-" if limit.scope_id is None else str(limit.scope_id)
                alerts.append(
                    Alert(
                        key=f"budget:{limit.scope}:{scope_id}:{month}:{percent}",
                        kind="budget",
                        scope=limit.scope,
                        scope_id=limit.scope_id,
                        scope_name=limit.name,
                        period=month,
                        spent_usd=used,
                        limit_usd=limit.monthly_usd,
                        threshold_percent=percent,
                    )
                )
    return alerts


def _month_spend(engine: Engine, month: str) -> dict[tuple[str, int | None], Decimal]:
    """USD spent in ``month`` per (scope, id), and in total as ("global", None)."""
    table = usage_key_daily_table
    query = (
        select(table.c.tenant_id, table.c.user_id, table.c.key_id, func.sum(table.c.cost_usd))
        .where(table.c.day >= month_start(month), table.c.day < next_month_start(month))
        .group_by(table.c.tenant_id, table.c.user_id, table.c.key_id)
    )
    spent: dict[tuple[str, int | None], Decimal] = defaultdict(Decimal)
    with engine.connect() as connection:
        for tenant_id, user_id, key_id, usd in connection.execute(query):
            amount = Decimal(str(usd or 0)).quantize(QUANTUM)
            spent[("global", None)] += amount
            for scope, owner in (("tenant", tenant_id), ("user", user_id), ("key", key_id)):
                if owner:  # 0: no owner (an unauthenticated call)
                    spent[(scope, int(owner))] += amount
    return spent


def _limits(engine: Engine) -> list[_Limit]:
    """Every monthly USD limit in force: global, tenants, users (own, else tier), keys."""
    limits: list[_Limit] = []
    with Session(engine) as session:
        cap = get_global_monthly_usd(session)
        if cap is not None:
            limits.append(_Limit("global", None, "deployment", cap))
        tenants = select(Tenant.id, Tenant.name, Tenant.monthly_usd).where(
            Tenant.monthly_usd.is_not(None)
        )
        limits += [
            _Limit("tenant", i, name, usd) for i, name, usd in session.execute(tenants) if usd
        ]
        user_usd = func.coalesce(User.monthly_usd, Tier.monthly_usd)
        users = (
            select(User.id, User.email, user_usd)
            .join(Tier, User.tier_id == Tier.id)
            .where(user_usd.is_not(None))
        )
        limits += [
            _Limit("user", i, email, Decimal(str(usd))) for i, email, usd in session.execute(users)
        ]
        keys = select(ApiKey.id, ApiKey.prefix, ApiKey.name, ApiKey.monthly_usd).where(
            ApiKey.monthly_usd.is_not(None), ApiKey.revoked_at.is_(None)
        )
        limits += [
            _Limit("key", i, f"{prefix}… {name}".strip(), usd)
            for i, prefix, name, usd in session.execute(keys)
            if usd
        ]
    return limits


# -- spikes -----------------------------------------------------------------------------


def spike_alerts(engine: Engine, now: datetime, rule: SpikeRule) -> list[Alert]:
    """Spikes in the hour ``now`` falls in, globally and per tenant. The baseline is the
    average hourly spend of the ``baseline_days`` whole days (UTC) before today's, read
    from the daily rollup; the hour from the hourly one: two small reads a pass."""
    hour = hour_of(now)
    today = day_of(now)
    current = _spend_by_tenant(
        engine, usage_hourly_table.c.hour, usage_hourly_table.c.cost_usd, hour, hour
    )
    before = _spend_by_tenant(
        engine,
        usage_daily_table.c.day,
        usage_daily_table.c.cost_usd,
        today - timedelta(days=rule.baseline_days),
        today - timedelta(days=1),
    )
    with engine.connect() as connection:
        names = {int(i): str(n) for i, n in connection.execute(select(Tenant.id, Tenant.name))}
    hours = Decimal(rule.baseline_days * 24)
    period = hour.strftime("%Y-%m-%dT%H")
    alerts = []
    for tenant_id, spent in current.items():
        baseline = before.get(tenant_id, Decimal(0)) / hours
        line = max(Decimal(str(rule.factor)) * baseline, Decimal(str(rule.min_usd)))
        if spent <= 0 or spent < line:
            continue
        scope = "global" if tenant_id is None else "tenant"
        alerts.append(
            Alert(
                key=f"spike:{scope}:{'-' if tenant_id is None else tenant_id}:{period}",
                kind="spike",
                scope=scope,
                scope_id=tenant_id,
                scope_name="deployment" if tenant_id is None else names.get(tenant_id, "?"),
                period=period,
                spent_usd=spent,
                baseline_usd=baseline.quantize(QUANTUM),
            )
        )
    return alerts


def _spend_by_tenant(
    engine: Engine, time: Any, cost: Any, first: datetime, last: datetime
) -> dict[int | None, Decimal]:
    """USD per tenant id in the rollup rows from ``first`` to ``last`` (inclusive), and
    in total under ``None``."""
    spent: dict[int | None, Decimal] = defaultdict(Decimal)
    tenant = time.table.c.tenant_id
    query = select(tenant, func.sum(cost)).where(time >= first, time <= last).group_by(tenant)
    with engine.connect() as connection:
        for tenant_id, usd in connection.execute(query):
            amount = Decimal(str(usd or 0)).quantize(QUANTUM)
            spent[None] += amount
            if tenant_id:
                spent[int(tenant_id)] += amount
    return spent
