"""What the Spend, Latency, Cache and Export pages read: ``shared.analytics`` as frames.

Each loader runs one dashboard query on the usage rollups (never the raw records)
through ``data.loader``, cached per database and arguments for a minute. Filters
come rounded to whole hours (``dashboard_filters``), so reruns hit the cache.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine

from console.data import loader
from shared import analytics, billing, budget
from shared.analytics import Dimension, Filters, Labels

DASHBOARD_TTL_SECONDS = 60
LABELS_TTL_SECONDS = 30


def _frame(rows: list[Any], row_type: type) -> pd.DataFrame:
    """A frame of dataclass rows, with its columns even when there are no rows."""
    columns = [f.name for f in fields(row_type)]
    return pd.DataFrame([asdict(row) for row in rows], columns=columns)


@loader(LABELS_TTL_SECONDS, is_config=True)
def labels(engine: Engine) -> Labels:
    return analytics.load_labels(engine)


# -- spend ------------------------------------------------------------------------------


@loader(DASHBOARD_TTL_SECONDS)
def spend_over_time(engine: Engine, filters: Filters, by: Dimension) -> pd.DataFrame:
    points = analytics.spend_over_time(engine, filters, by, analytics.load_labels(engine))
    return _frame(points, analytics.SpendPoint)


@loader(DASHBOARD_TTL_SECONDS)
def top_spenders(engine: Engine, filters: Filters, by: Dimension, limit: int) -> pd.DataFrame:
    rows = analytics.top_spenders(engine, filters, by, analytics.load_labels(engine), limit=limit)
    return _frame(rows, analytics.Spender)


@loader(DASHBOARD_TTL_SECONDS)
def totals(engine: Engine, filters: Filters) -> analytics.Totals:
    return analytics.totals(engine, filters)


@loader(DASHBOARD_TTL_SECONDS)
def savings_over_time(engine: Engine, filters: Filters) -> pd.DataFrame:
    return _frame(analytics.savings_over_time(engine, filters), analytics.SavingsPoint)


@loader(DASHBOARD_TTL_SECONDS)
def month_forecast(engine: Engine, filters: Filters) -> budget.Forecast:
    return budget.month_forecast(engine, filters, datetime.now(UTC))


@loader(DASHBOARD_TTL_SECONDS)
def quota_use(engine: Engine, filters: Filters) -> pd.DataFrame:
    uses = budget.quota_use(engine, filters, datetime.now(UTC), analytics.load_labels(engine))
    frame = _frame(uses, budget.QuotaUse)
    frame["fraction"] = [use.fraction for use in uses]
    return frame


# -- latency, errors, refusals ----------------------------------------------------------


@loader(DASHBOARD_TTL_SECONDS)
def latency_over_time(engine: Engine, filters: Filters) -> pd.DataFrame:
    return _frame(analytics.latency_over_time(engine, filters), analytics.LatencyPoint)


@loader(DASHBOARD_TTL_SECONDS)
def latency_summary(engine: Engine, filters: Filters) -> pd.DataFrame:
    return _frame(analytics.latency_summary(engine, filters), analytics.LatencyPoint)


@loader(DASHBOARD_TTL_SECONDS)
def error_rates(engine: Engine, filters: Filters) -> pd.DataFrame:
    return _frame(analytics.error_rates(engine, filters), analytics.RatePoint)


@loader(DASHBOARD_TTL_SECONDS)
def refusals(engine: Engine, filters: Filters) -> pd.DataFrame:
    return _frame(analytics.refusals(engine, filters), analytics.RatePoint)


# -- cache ------------------------------------------------------------------------------


@loader(DASHBOARD_TTL_SECONDS)
def cache_hit_rates(
    engine: Engine, filters: Filters, by: Literal["model", "tenant"]
) -> pd.DataFrame:
    rows = analytics.cache_hit_rates(engine, filters, by, analytics.load_labels(engine))
    return _frame(rows, analytics.RatePoint)


# -- export -----------------------------------------------------------------------------


@loader(DASHBOARD_TTL_SECONDS)
def billing_table(
    engine: Engine, period: billing.BillingPeriod, tenant_ids: tuple[int, ...]
) -> pd.DataFrame:
    frame = _frame(billing.billing_rows(engine, period, tenant_ids), billing.BillingRow)
    for column in ("cost_usd", "response_cache_saved_usd", "prompt_cache_saved_usd"):
        frame[column] = frame[column].astype(float)
    return frame


@loader(DASHBOARD_TTL_SECONDS)
def billing_csv(engine: Engine, period: billing.BillingPeriod, tenant_ids: tuple[int, ...]) -> str:
    return billing.billing_csv(engine, period, tenant_ids)
