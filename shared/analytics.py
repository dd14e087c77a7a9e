"""Dashboard queries: spend, latency and cache figures read from the usage rollups.

Every function here reads ``usage_hourly`` or ``usage_end_user_daily`` (never the raw
request records), groups in SQL, and returns small typed rows for the console to
chart. Money is returned as float (display values); the billing export in
``shared.billing`` keeps Decimal.

Time: ``Filters.start`` and ``end`` are UTC; the hourly rollup is read from the hour
``start`` falls in, the end-user rollup from its day. Series are per hour for ranges
up to ``HOURLY_RANGE`` and per day beyond. Views by end user are always per day.
Rows without a tenant, user, key or model (refused before authentication) carry
id 0 or name "" and are labelled "(none)".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Table,
    case,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.orm import Session

from shared.models import (
    LATENCY_BUCKETS,
    LATENCY_EDGES_MS,
    LATENCY_METRICS,
    ApiKey,
    ModelPrice,
    Tenant,
    User,
    end_user_daily_table,
    latency_column,
    usage_hourly_table,
)
from shared.rollup import as_utc, day_of, hour_of

Dimension = Literal["model", "provider", "tenant", "user", "key", "end_user"]
Granularity = Literal["hour", "day"]
DIMENSIONS: tuple[Dimension, ...] = ("model", "provider", "tenant", "user", "key", "end_user")
HOURLY_RANGE = timedelta(days=3)
OTHER = "other"
NONE = "(none)"
PERCENTILES = (0.5, 0.95, 0.99)

_hourly = usage_hourly_table
_daily = end_user_daily_table


@dataclass(frozen=True, slots=True)
class Filters:
    """What a dashboard shows: a UTC time range, and optionally some owners and models."""

    start: datetime
    end: datetime
    tenant_ids: tuple[int, ...] = ()
    user_ids: tuple[int, ...] = ()
    key_ids: tuple[int, ...] = ()
    models: tuple[str, ...] = ()

    @property
    def granularity(self) -> Granularity:
        return "hour" if self.end - self.start <= HOURLY_RANGE else "day"


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


# -- building blocks --------------------------------------------------------------------


def owner_conditions(table: Table, filters: Filters) -> list[ColumnElement[bool]]:
    """The tenant, user, key and model filters on a rollup table (not the time range)."""
    conditions: list[ColumnElement[bool]] = []
    for column, values in (
        (table.c.tenant_id, filters.tenant_ids),
        (table.c.user_id, filters.user_ids),
        (table.c.key_id, filters.key_ids),
        (table.c.model, filters.models),
    ):
        if values:
            conditions.append(column.in_(values))
    return conditions


def _conditions(table: Table, filters: Filters) -> list[ColumnElement[bool]]:
    if table is _daily:
        time, start = table.c.day, day_of(filters.start)
    else:
        time, start = table.c.hour, hour_of(filters.start)
    return [time >= start, time < as_utc(filters.end), *owner_conditions(table, filters)]


def _period(connection: Connection, table: Table, granularity: Granularity) -> ColumnElement[Any]:
    """The start of the hour or day each rollup row falls in (SQL literals, so that
    PostgreSQL sees the same expression in SELECT and GROUP BY)."""
    if table is _daily:
        return table.c.day
    if granularity == "hour":
        return table.c.hour
    day = DateTime(timezone=True)
    if connection.dialect.name == "postgresql":
        return func.date_trunc(
            literal_column("'day'"), table.c.hour, literal_column("'UTC'"), type_=day
        )
    return func.strftime(literal_column("'%Y-%m-%d 00:00:00.000000'"), table.c.hour, type_=day)


def _dimension(table: Table, by: Dimension) -> ColumnElement[Any]:
    columns = {
        "model": table.c.model,
        "provider": table.c.provider,
        "tenant": table.c.tenant_id,
        "user": table.c.user_id,
        "key": table.c.key_id,
    }
    if by == "end_user":
        return _daily.c.end_user
    return columns[by]


def _top(
    connection: Connection,
    table: Table,
    conditions: Sequence[ColumnElement[bool]],
    group: ColumnElement[Any],
    rank_by: ColumnElement[Any],
    limit: int,
) -> list[Any]:
    """The ``limit`` groups with the largest sum of ``rank_by``."""
    query = (
        select(group)
        .where(*conditions)
        .group_by(group)
        .order_by(func.sum(rank_by).desc(), group)
        .limit(limit)
    )
    return list(connection.scalars(query))


def _series(
    connection: Connection,
    table: Table,
    filters: Filters,
    group: ColumnElement[Any] | None,
    sums: dict[str, ColumnElement[Any]],
    *,
    granularity: Granularity | None = None,
    rank_by: str | None = None,
    top: int = 8,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[dict[str, Any]]:
    """Sums per period (and group). With ``rank_by``, groups outside the ``top`` by that
    sum are folded into one group, None. Rows: ``period``, ``group`` and the sums."""
    conditions = [*_conditions(table, filters), *where]
    period = _period(connection, table, granularity or filters.granularity)
    if group is None:
        group = null()
    elif rank_by is not None:
        ranked = _top(connection, table, conditions, group, sums[rank_by], top)
        group = case((group.in_(ranked), group), else_=null())
    per_row = select(
        period.label("period"),
        group.label("grp"),
        *(value.label(name) for name, value in sums.items()),
    ).where(*conditions)
    rows = per_row.subquery("per_row")
    query = (
        select(
            rows.c.period,
            rows.c.grp,
            *(func.coalesce(func.sum(rows.c[name]), 0).label(name) for name in sums),
        )
        .group_by(rows.c.period, rows.c.grp)
        .order_by(rows.c.period)
    )
    return [
        {**row, "period": as_utc(row["period"]), "group": row["grp"]}
        for row in connection.execute(query).mappings()
    ]


def _totals(
    connection: Connection,
    table: Table,
    conditions: Sequence[ColumnElement[bool]],
    sums: dict[str, ColumnElement[Any]],
) -> dict[str, Any]:
    query = select(*(func.coalesce(func.sum(v), 0).label(k) for k, v in sums.items()))
    return dict(connection.execute(query.select_from(table).where(*conditions)).mappings().one())


def _spend_sums(table: Table) -> dict[str, ColumnElement[Any]]:
    c = table.c
    return {
        "cost_usd": c.cost_usd,
        "tokens": c.prompt_tokens + c.completion_tokens,
        "requests": c.requests,
    }


# -- spend ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpendPoint:
    period: datetime
    group: str
    cost_usd: float
    tokens: int
    requests: int


def spend_over_time(
    engine: Engine, filters: Filters, by: Dimension, labels: Labels, *, top: int = 8
) -> list[SpendPoint]:
    """Cost, tokens (of calls that went upstream) and requests per period and group;
    groups beyond the ``top`` by cost are summed as "other"."""
    table = _daily if by == "end_user" else _hourly
    with engine.connect() as connection:
        rows = _series(
            connection,
            table,
            filters,
            _dimension(table, by),
            _spend_sums(table),
            granularity="day" if by == "end_user" else None,
            rank_by="cost_usd",
            top=top,
        )
    return [
        SpendPoint(
            period=row["period"],
            group=labels.name(by, row["group"]),
            cost_usd=float(row["cost_usd"]),
            tokens=int(row["tokens"]),
            requests=int(row["requests"]),
        )
        for row in rows
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
    table = _daily if by == "end_user" else _hourly
    sums = _spend_sums(table)
    conditions = _conditions(table, filters)
    groups = [_dimension(table, by).label("grp"), table.c.tenant_id.label("tenant_id")]
    if by != "end_user":
        groups.pop()
    query = (
        select(*groups, *(func.sum(v).label(k) for k, v in sums.items()))
        .where(*conditions)
        .group_by(*groups)
        .order_by(func.sum(table.c.cost_usd).desc(), *groups)
        .limit(limit)
    )
    with engine.connect() as connection:
        total = float(_totals(connection, table, conditions, sums)["cost_usd"])
        rows = list(connection.execute(query).mappings())
    spenders = []
    for row in rows:
        name = labels.name(by, row["grp"])
        if by == "end_user":
            name = f"{name} · {labels.name('tenant', row['tenant_id'])}"
        cost = float(row["cost_usd"])
        share = cost / total if total else 0.0
        spenders.append(Spender(name, int(row["requests"]), int(row["tokens"]), cost, share))
    return spenders


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


_TOTAL_COLUMNS = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_hit_tokens",
    "cost_usd",
    "response_cache_saved_usd",
    "prompt_cache_saved_usd",
)


def totals(engine: Engine, filters: Filters) -> Totals:
    sums: dict[str, ColumnElement[Any]] = {name: _hourly.c[name] for name in _TOTAL_COLUMNS}
    with engine.connect() as connection:
        row = _totals(connection, _hourly, _conditions(_hourly, filters), sums)
    return Totals(
        requests=int(row["requests"]),
        errors=int(row["errors"]),
        cache_hits=int(row["cache_hits"]),
        prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]),
        cache_read_tokens=int(row["cache_read_tokens"]),
        cache_hit_tokens=int(row["cache_hit_tokens"]),
        cost_usd=float(row["cost_usd"]),
        response_cache_saved_usd=float(row["response_cache_saved_usd"]),
        prompt_cache_saved_usd=float(row["prompt_cache_saved_usd"]),
    )


@dataclass(frozen=True, slots=True)
class SavingsPoint:
    period: datetime
    source: str  # "response cache" or "prompt cache"
    saved_usd: float
    tokens: int  # answered from the response cache / read from the provider's prompt cache


def savings_over_time(engine: Engine, filters: Filters) -> list[SavingsPoint]:
    c = _hourly.c
    sums: dict[str, ColumnElement[Any]] = {
        "response_usd": c.response_cache_saved_usd,
        "response_tokens": c.cache_hit_tokens,
        "prompt_usd": c.prompt_cache_saved_usd,
        "prompt_tokens": c.cache_read_tokens,
    }
    with engine.connect() as connection:
        rows = _series(connection, _hourly, filters, None, sums)
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


def _histogram_sums() -> dict[str, ColumnElement[Any]]:
    return {
        latency_column(metric, bucket): _hourly.c[latency_column(metric, bucket)]
        for metric in LATENCY_METRICS
        for bucket in range(LATENCY_BUCKETS)
    }


def _latency_points(period: datetime | None, model: str, row: Any) -> list[LatencyPoint]:
    points = []
    for metric in LATENCY_METRICS:
        counts = [int(row[latency_column(metric, b)] or 0) for b in range(LATENCY_BUCKETS)]
        p50, p95, p99 = (percentile(counts, q) for q in PERCENTILES)
        points.append(LatencyPoint(period, model or NONE, metric, sum(counts), p50, p95, p99))
    return points


def latency_over_time(engine: Engine, filters: Filters) -> list[LatencyPoint]:
    """p50 / p95 / p99 per period, model and metric, from the latency histograms."""
    with engine.connect() as connection:
        rows = _series(connection, _hourly, filters, _hourly.c.model, _histogram_sums())
    return [p for row in rows for p in _latency_points(row["period"], row["group"], row)]


def latency_summary(engine: Engine, filters: Filters) -> list[LatencyPoint]:
    """p50 / p95 / p99 per model and metric over the whole range."""
    sums = _histogram_sums()
    query = (
        select(_hourly.c.model, *(func.sum(v).label(k) for k, v in sums.items()))
        .where(*_conditions(_hourly, filters))
        .group_by(_hourly.c.model)
        .order_by(_hourly.c.model)
    )
    with engine.connect() as connection:
        rows = list(connection.execute(query).mappings())
    return [p for row in rows for p in _latency_points(None, row["model"], row)]


# -- errors and refusals ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatePoint:
    period: datetime
    group: str
    count: int
    requests: int  # every call in the period (all groups)
    rate: float  # count / requests


def _rates(
    engine: Engine,
    filters: Filters,
    group: ColumnElement[Any],
    count: ColumnElement[Any],
    where: ColumnElement[bool],
    *,
    denominator: Sequence[ColumnElement[bool]] = (),
) -> list[RatePoint]:
    with engine.connect() as connection:
        requests = {
            row["period"]: int(row["requests"])
            for row in _series(
                connection,
                _hourly,
                filters,
                None,
                {"requests": _hourly.c.requests},
                where=denominator,
            )
        }
        rows = _series(connection, _hourly, filters, group, {"count": count}, where=[where])
    points = []
    for row in rows:
        total = requests.get(row["period"], 0)
        value = int(row["count"])
        group_name = NONE if row["group"] in ("", 0) else str(row["group"])
        points.append(
            RatePoint(row["period"], group_name, value, total, value / total if total else 0.0)
        )
    return points


def error_rates(engine: Engine, filters: Filters) -> list[RatePoint]:
    """Errors per period and type (the error code, or ``http_<status>``), over all calls."""
    c = _hourly.c
    return _rates(engine, filters, c.error_code, c.errors, c.errors > 0)


def refusals(engine: Engine, filters: Filters) -> list[RatePoint]:
    """Refusals per period and reason (rate_limit, quota, screening), over all calls."""
    c = _hourly.c
    return _rates(engine, filters, c.refusal_reason, c.requests, c.refusal_reason != "")


# -- cache ------------------------------------------------------------------------------


def cache_hit_rates(
    engine: Engine, filters: Filters, by: Literal["model", "tenant"], labels: Labels
) -> list[RatePoint]:
    """Response-cache hits over answered calls (errors and refusals left out) per period
    and model or tenant; beyond the top 8 by calls, groups are summed as "other"."""
    table = _hourly
    answered = table.c.error_code == ""
    sums: dict[str, ColumnElement[Any]] = {
        "requests": table.c.requests,
        "hits": table.c.cache_hits,
    }
    with engine.connect() as connection:
        rows = _series(
            connection,
            table,
            filters,
            _dimension(table, by),
            sums,
            rank_by="requests",
            where=[answered],
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
