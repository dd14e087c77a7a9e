"""Dashboard queries: spend, latency and cache figures read from the usage rollups.

Every function reads a rollup (``shared.rollup_query.scope_for`` picks which; never
the raw request records), groups in SQL, and returns small typed rows for the console
to chart. Money is returned as float (display values); the billing export in
``shared.billing`` keeps Decimal.

Series are per hour for ranges up to ``HOURLY_RANGE`` and per day beyond (from
midnight UTC of the first day); views by end user are always per day. Rows without
a tenant, user, key or model (refused before authentication) carry id 0 or name ""
and are labelled "(none)"; groups beyond a chart's top ones are summed as "other".
Latency percentiles are interpolated within histogram buckets (``percentile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Engine, Table, func, select
from sqlalchemy.orm import Session

from shared import end_users
from shared.end_users import EndUser
from shared.models import (
    LATENCY_BUCKETS,
    LATENCY_EDGES_MS,
    LATENCY_METRICS,
    ApiKey,
    ModelPrice,
    Tenant,
    User,
    latency_column,
)
from shared.rollup_query import (
    HOURLY_RANGE,
    Filters,
    Granularity,
    reading,
    scope_for,
    series,
    sums_of,
)

__all__ = ["HOURLY_RANGE", "Filters", "Granularity"]  # re-exported for the console

Dimension = Literal["model", "provider", "tenant", "user", "key", "end_user"]
DIMENSIONS: tuple[Dimension, ...] = ("model", "provider", "tenant", "user", "key", "end_user")
_COLUMNS = {
    "model": "model",
    "provider": "provider",
    "tenant": "tenant_id",
    "user": "user_id",
    "key": "key_id",
    "end_user": "end_user",
}
OTHER = "other"
NONE = "(none)"
PERCENTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Labels:
    """Display names of tenants, users and keys by id, who owns what, and the models."""

    tenants: dict[int, str] = field(default_factory=dict)
    users: dict[int, str] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    user_tenants: dict[int, int] = field(default_factory=dict)
    key_users: dict[int, int] = field(default_factory=dict)
    models: tuple[str, ...] = ()

    def name(self, dimension: Dimension, value: Any) -> str:
        if value is None:
            return OTHER
        if value in (0, ""):
            return NONE
        names = {"tenant": self.tenants, "user": self.users, "key": self.keys}.get(dimension)
        if names is None:
            return str(value)
        return names.get(int(value), f"#{value}")


def load_labels(engine: Engine) -> Labels:
    with Session(engine) as session:
        tenants = {i: name for i, name in session.execute(select(Tenant.id, Tenant.name))}
        users, user_tenants = {}, {}
        for user_id, email, tenant_id in session.execute(
            select(User.id, User.email, User.tenant_id)
        ):
            users[user_id], user_tenants[user_id] = email, tenant_id
        keys, key_users = {}, {}
        for key_id, name, prefix, user_id in session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.user_id)
        ):
            keys[key_id] = f"{name} ({prefix}…)" if name else f"{prefix}…"
            key_users[key_id] = user_id
        models = tuple(session.scalars(select(ModelPrice.name).order_by(ModelPrice.name)))
    return Labels(tenants, users, keys, user_tenants, key_users, models)


# -- spend ------------------------------------------------------------------------------


SPEND_COLUMNS = ("cost_usd", "prompt_tokens", "completion_tokens", "requests")


def _spend_sums(table: Table) -> dict[str, ColumnElement[Any]]:
    c = table.c
    return {
        "cost_usd": c.cost_usd,
        "tokens": c.prompt_tokens + c.completion_tokens,
        "requests": c.requests,
    }


@dataclass(frozen=True, slots=True)
class SpendPoint:
    period: datetime
    group: str
    cost_usd: float
    tokens: int
    requests: int


def _end_user_name(labels: Labels, group: EndUser | None) -> str:
    if group is None:
        return OTHER
    tenant_id, end_user = group
    return f"{end_user or NONE} · {labels.name('tenant', tenant_id)}"


def spend_over_time(
    engine: Engine, filters: Filters, by: Dimension, labels: Labels, *, top: int = 8
) -> list[SpendPoint]:
    """Cost, tokens (of calls that went upstream) and requests per period and group;
    groups beyond the ``top`` by cost are summed as "other". End users: per day."""
    if by == "end_user":
        with reading(engine) as connection:
            rows = end_users.spend_by_day(connection, filters, top)
        names = [_end_user_name(labels, row["group"]) for row in rows]
    else:
        scope = scope_for(filters, (_COLUMNS[by], *SPEND_COLUMNS))
        group, sums = scope.table.c[_COLUMNS[by]], _spend_sums(scope.table)
        with reading(engine) as connection:
            rows = series(connection, scope, group, sums, rank_by="cost_usd", top=top)
        names = [labels.name(by, row["group"]) for row in rows]
    return [
        SpendPoint(
            period=row["period"],
            group=name,
            cost_usd=float(row["cost_usd"]),
            tokens=int(row["tokens"]),
            requests=int(row["requests"]),
        )
        for row, name in zip(rows, names, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Spender:
    name: str
    requests: int
    tokens: int
    cost_usd: float
    share: float  # of the filtered total cost, 0..1


def top_spenders(
    engine: Engine, filters: Filters, by: Dimension, labels: Labels, *, limit: int = 10
) -> list[Spender]:
    """The ``limit`` largest spenders. End users are told apart within their tenant."""
    total_scope = scope_for(filters, ["cost_usd"])
    with reading(engine) as connection:
        total = sums_of(connection, total_scope, {"usd": total_scope.table.c.cost_usd})["usd"]
        if by == "end_user":
            rows = [
                (
                    _end_user_name(labels, (s.tenant_id, s.end_user)),
                    s.requests,
                    s.tokens,
                    s.cost_usd,
                )
                for s in end_users.top_end_users(connection, filters, limit)
            ]
        else:
            rows = _top_owners(connection, filters, by, labels, limit)
    return [
        Spender(name, requests, tokens, float(cost), float(cost) / float(total) if total else 0.0)
        for name, requests, tokens, cost in rows
    ]


def _top_owners(
    connection: Connection, filters: Filters, by: Dimension, labels: Labels, limit: int
) -> list[tuple[str, int, int, Any]]:
    scope = scope_for(filters, (_COLUMNS[by], *SPEND_COLUMNS))
    table = scope.table
    group = table.c[_COLUMNS[by]]
    query = (
        select(group, *(func.sum(v).label(k) for k, v in _spend_sums(table).items()))
        .where(*scope.conditions)
        .group_by(group)
        .order_by(func.sum(table.c.cost_usd).desc(), group)
        .limit(limit)
    )
    return [
        (labels.name(by, row[0]), int(row.requests), int(row.tokens), row.cost_usd)
        for row in connection.execute(query)
    ]


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the filtered range."""

    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_hit_tokens: int = 0
    cost_usd: float = 0.0
    response_cache_saved_usd: float = 0.0
    prompt_cache_saved_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def hit_rate(self) -> float:
        """Cache hits over the calls that got an answer (errors and refusals left out)."""
        answered = self.requests - self.errors
        return self.cache_hits / answered if answered > 0 else 0.0


def totals(engine: Engine, filters: Filters) -> Totals:
    names = [f.name for f in Totals.__dataclass_fields__.values()]
    scope = scope_for(filters, names)
    with reading(engine) as connection:
        row = sums_of(connection, scope, {name: scope.table.c[name] for name in names})
    values: dict[str, Any] = {
        name: float(row[name]) if name.endswith("_usd") else int(row[name]) for name in names
    }
    return Totals(**values)


@dataclass(frozen=True, slots=True)
class SavingsPoint:
    period: datetime
    source: str  # "response cache" or "prompt cache"
    saved_usd: float
    tokens: int  # answered from the response cache / read from the provider's prompt cache


def savings_over_time(engine: Engine, filters: Filters) -> list[SavingsPoint]:
    columns = ("response_cache_saved_usd", "cache_hit_tokens")
    scope = scope_for(filters, (*columns, "prompt_cache_saved_usd", "cache_read_tokens"))
    c = scope.table.c
    sums: dict[str, ColumnElement[Any]] = {
        "response_usd": c.response_cache_saved_usd,
        "response_tokens": c.cache_hit_tokens,
        "prompt_usd": c.prompt_cache_saved_usd,
        "prompt_tokens": c.cache_read_tokens,
    }
    with reading(engine) as connection:
        rows = series(connection, scope, None, sums)
    points = []
    for row in rows:
        for source, prefix in (("response cache", "response"), ("prompt cache", "prompt")):
            usd, tokens = float(row[f"{prefix}_usd"]), int(row[f"{prefix}_tokens"])
            points.append(SavingsPoint(row["period"], source, usd, tokens))
    return points


# -- latency ----------------------------------------------------------------------------


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, interpolated within its bucket.

    The value ranked ``ceil(q * n)`` lies in the bucket found, so the estimate is off by
    less than that bucket's width; the open-ended last bucket gives its lower edge.
    None for an empty histogram.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = max(q * total, 1e-9)
    seen = 0
    for bucket, count in enumerate(counts):
        if count and seen + count >= rank:
            low = LATENCY_EDGES_MS[bucket - 1] if bucket > 0 else 0.0
            if bucket >= len(LATENCY_EDGES_MS):
                return low
            high = LATENCY_EDGES_MS[bucket]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return LATENCY_EDGES_MS[-1]


def bucket_bounds(value_ms: float) -> tuple[float, float]:
    """The [low, high) bounds of the histogram bucket holding ``value_ms``."""
    edges = (0.0, *LATENCY_EDGES_MS, math.inf)
    for low, high in zip(edges, edges[1:], strict=False):
        if value_ms < high:
            return low, high
    return edges[-2], math.inf


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    period: datetime | None  # None in a summary over the whole range
    model: str
    metric: str  # total, upstream, overhead, ttft
    count: int
    p50: float | None
    p95: float | None
    p99: float | None


HISTOGRAM_COLUMNS = tuple(
    latency_column(metric, bucket)
    for metric in LATENCY_METRICS
    for bucket in range(LATENCY_BUCKETS)
)


def _histogram_sums(table: Table) -> dict[str, ColumnElement[Any]]:
    return {name: table.c[name] for name in HISTOGRAM_COLUMNS}


_METRIC_COLUMNS = {
    metric: [latency_column(metric, bucket) for bucket in range(LATENCY_BUCKETS)]
    for metric in LATENCY_METRICS
}


def _latency_points(period: datetime | None, model: str, row: Any) -> list[LatencyPoint]:
    points = []
    for metric, names in _METRIC_COLUMNS.items():
        counts = [int(row[name] or 0) for name in names]
        p50, p95, p99 = (percentile(counts, q) for q in PERCENTILES)
        points.append(LatencyPoint(period, model or NONE, metric, sum(counts), p50, p95, p99))
    return points


def latency_over_time(engine: Engine, filters: Filters) -> list[LatencyPoint]:
    """p50 / p95 / p99 per period, model and metric, from the latency histograms."""
    scope = scope_for(filters, ("model", *HISTOGRAM_COLUMNS))
    with reading(engine) as connection:
        rows = series(connection, scope, scope.table.c.model, _histogram_sums(scope.table))
    return [p for row in rows for p in _latency_points(row["period"], row["group"], row)]


def latency_summary(engine: Engine, filters: Filters) -> list[LatencyPoint]:
    """p50 / p95 / p99 per model and metric over the whole range."""
    scope = scope_for(filters, ("model", *HISTOGRAM_COLUMNS))
    model = scope.table.c.model
    sums = _histogram_sums(scope.table)
    query = (
        select(model, *(func.sum(v).label(k) for k, v in sums.items()))
        .where(*scope.conditions)
        .group_by(model)
        .order_by(model)
    )
    with reading(engine) as connection:
        rows = list(connection.execute(query).mappings())
    return [p for row in rows for p in _latency_points(None, row["model"], row)]


# -- errors, refusals and the cache -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatePoint:
    period: datetime
    group: str
    count: int
    requests: int  # the calls of the period (of the group, for hit rates)
    rate: float  # count / requests


def _rates(engine: Engine, filters: Filters, group: str, count: str) -> list[RatePoint]:
    """Per period and ``group`` value (not ""), the sum of ``count`` over all calls."""
    scope = scope_for(filters, (group, count, "requests"))
    c = scope.table.c
    with reading(engine) as connection:
        requests = {
            row["period"]: int(row["requests"])
            for row in series(connection, scope, None, {"requests": c.requests})
        }
        rows = series(connection, scope, c[group], {"count": c[count]}, where=[c[group] != ""])
    points = []
    for row in rows:
        total, value = requests.get(row["period"], 0), int(row["count"])
        points.append(
            RatePoint(row["period"], str(row["group"]), value, total, value / total if total else 0)
        )
    return points


def error_rates(engine: Engine, filters: Filters) -> list[RatePoint]:
    """Errors per period and type (the error code, or ``http_<status>``), over all calls."""
    return _rates(engine, filters, "error_code", "errors")


def refusals(engine: Engine, filters: Filters) -> list[RatePoint]:
    """Refusals per period and reason (rate_limit, quota, screening), over all calls."""
    return _rates(engine, filters, "refusal_reason", "requests")


def cache_hit_rates(
    engine: Engine, filters: Filters, by: Literal["model", "tenant"], labels: Labels
) -> list[RatePoint]:
    """Response-cache hits over answered calls (errors and refusals left out) per period
    and model or tenant; beyond the top 8 by calls, groups are summed as "other"."""
    scope = scope_for(filters, (_COLUMNS[by], "requests", "cache_hits", "error_code"))
    c = scope.table.c
    sums: dict[str, ColumnElement[Any]] = {"requests": c.requests, "hits": c.cache_hits}
    with reading(engine) as connection:
        rows = series(
            connection, scope, c[_COLUMNS[by]], sums, rank_by="requests", where=[c.error_code == ""]
        )
    return [
        RatePoint(
            row["period"],
            labels.name(by, row["group"]),
            int(row["hits"]),
            int(row["requests"]),
            int(row["hits"]) / int(row["requests"]) if row["requests"] else 0.0,
        )
        for row in rows
    ]
