"""The usage rollups the dashboards read, kept up to date as records are written.

``usage_hourly`` holds one row per hour x tenant x user x key x model x provider x
error code x refusal reason: counts, tokens, cost, savings and latency histograms.
``usage_end_user_daily`` holds one row per day x tenant x user x key x end user x
model x provider (end users are many, so no hours, errors or latencies there).

``add_records`` is called by ``shared.records.write_records`` in the transaction
that inserts the records, with only the rows that insert really added, so a
replayed batch never counts twice. ``rebuild`` recomputes both rollups from the
raw records in SQL; the two paths classify a record the same way, which the
tests check by comparing a rollup built incrementally with a rebuilt one.

Hours and days are UTC. A missing id is stored as 0 and a missing name as "".
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Insert,
    Table,
    case,
    cast,
    delete,
    exists,
    func,
    inspect,
    literal,
    literal_column,
    null,
    select,
    text,
)
from sqlalchemy import String as SqlString
from sqlalchemy.dialects import postgresql, sqlite

from shared.models import (
    LATENCY_BUCKETS,
    LATENCY_EDGES_MS,
    LATENCY_METRICS,
    RequestRecord,
    end_user_daily_table,
    latency_column,
    usage_hourly_table,
)

HOURLY_KEY = (
    "hour",
    "tenant_id",
    "user_id",
    "key_id",
    "model",
    "provider",
    "error_code",
    "refusal_reason",
)
DAILY_KEY = ("day", "tenant_id", "user_id", "key_id", "end_user", "model", "provider")
# The request_records column measured by each latency histogram.
METRIC_SOURCES = {
    "total": "latency_ms",
    "upstream": "upstream_latency_ms",
    "overhead": "overhead_ms",
    "ttft": "ttft_ms",
}
_ZERO: ColumnElement[int] = literal_column("0")  # inline: ~180 bound zeros per row cost real time
_SQLITE_HOUR = "%Y-%m-%d %H:00:00.000000"  # SQLAlchemy's SQLite DATETIME text format
_SQLITE_DAY = "%Y-%m-%d 00:00:00.000000"


def as_utc(at: datetime) -> datetime:
    """``at`` in UTC; naive datetimes are taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def hour_of(at: datetime) -> datetime:
    return as_utc(at).replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> datetime:
    return as_utc(at).replace(hour=0, minute=0, second=0, microsecond=0)


def latency_bucket(value_ms: float) -> int:
    """The histogram bucket of a latency (see ``shared.models.LATENCY_EDGES_MS``)."""
    return bisect_right(LATENCY_EDGES_MS, value_ms)


def error_code_of(error_code: str | None, status: int) -> str:
    """The rollup's error type: the record's code, ``http_<status>`` without one, or ""."""
    if error_code:
        return error_code
    return f"http_{status}" if status >= 400 else ""


@dataclass(slots=True)
class _Sums:
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_hit_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    response_cache_saved_usd: Decimal = Decimal(0)
    prompt_cache_saved_usd: Decimal = Decimal(0)

    def add(self, row: Mapping[str, Any]) -> None:
        self.requests += 1
        self.cost_usd += Decimal(row["cost_usd"])
        saved = Decimal(row["cache_saved_usd"])
        if row["is_cached"]:
            self.cache_hits += 1
            self.cache_hit_tokens += row["prompt_tokens"] + row["completion_tokens"]
            self.response_cache_saved_usd += saved
            return
        self.prompt_tokens += row["prompt_tokens"]
        self.completion_tokens += row["completion_tokens"]
        self.cache_read_tokens += row["cache_read_tokens"]
        self.cache_write_tokens += row["cache_write_tokens"]
        self.prompt_cache_saved_usd += saved

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _HourSums:
    sums: _Sums = field(default_factory=_Sums)
    errors: int = 0
    histograms: dict[str, list[int]] = field(
        default_factory=lambda: {metric: [0] * LATENCY_BUCKETS for metric in LATENCY_METRICS}
    )

    def add(self, row: Mapping[str, Any]) -> None:
        self.sums.add(row)
        if row["status"] >= 400:
            self.errors += 1
        for metric, source in METRIC_SOURCES.items():
            value = row[source]
            if value is not None:
                self.histograms[metric][latency_bucket(value)] += 1

    def values(self) -> dict[str, Any]:
        values = {"errors": self.errors, **self.sums.values()}
        for metric, counts in self.histograms.items():
            for bucket, count in enumerate(counts):
                values[latency_column(metric, bucket)] = count or None
        return values


def rollup_rows(
    records: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Aggregate ``request_records`` rows into (hourly, end-user daily) rollup rows.

    Rows come sorted by key, so that concurrent writers lock rollup rows in the
    same order and cannot deadlock each other.
    """
    hourly: dict[tuple[Any, ...], _HourSums] = {}
    daily: dict[tuple[Any, ...], _Sums] = {}
    for row in records:
        owner = (row["tenant_id"] or 0, row["user_id"] or 0, row["key_id"] or 0)
        model, provider = row["model"] or "", row["provider"] or ""
        hour_key = (
            hour_of(row["created_at"]),
            *owner,
            model,
            provider,
            error_code_of(row["error_code"], row["status"]),
            row["refusal_reason"] or "",
        )
        hourly.setdefault(hour_key, _HourSums()).add(row)
        day_key = (day_of(row["created_at"]), *owner, row["end_user"] or "", model, provider)
        daily.setdefault(day_key, _Sums()).add(row)
    return (
        [dict(zip(HOURLY_KEY, key, strict=True)) | hourly[key].values() for key in sorted(hourly)],
        [dict(zip(DAILY_KEY, key, strict=True)) | daily[key].values() for key in sorted(daily)],
    )


def add_records(connection: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    """Add newly inserted ``request_records`` rows to the rollups, in the caller's transaction."""
    if not records:
        return
    hourly, daily = rollup_rows(records)
    dialect = connection.dialect.name
    connection.execute(_upsert(dialect, usage_hourly_table, HOURLY_KEY), hourly)
    connection.execute(_upsert(dialect, end_user_daily_table, DAILY_KEY), daily)


@cache  # ~200 columns: build each statement once (SQLAlchemy caches its compiled form)
def _upsert(dialect: str, table: Table, key: tuple[str, ...]) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET every sum to old + new (NULL stays zero)."""
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise NotImplementedError(f"unsupported database dialect {dialect}")
    excluded = statement.excluded
    updates: dict[str, ColumnElement[Any]] = {}
    for column in table.columns:
        if column.name in key:
            continue
        if column.nullable:
            total = func.coalesce(column, _ZERO) + func.coalesce(excluded[column.name], _ZERO)
            updates[column.name] = func.nullif(total, _ZERO)
        else:
            updates[column.name] = column + excluded[column.name]
    return statement.on_conflict_do_update(index_elements=list(key), set_=updates)


@dataclass(frozen=True, slots=True)
class RebuildResult:
    hourly_rows: int
    daily_rows: int


def rebuild(engine: Engine, since: datetime | None = None) -> RebuildResult:
    """Recompute both rollups from the raw records created from ``since`` (all if None).

    The hourly rollup is rebuilt from the hour ``since`` falls in and the daily one
    from its day. On PostgreSQL the rollup tables are locked for the transaction, so
    records written meanwhile are counted exactly once (writers wait, then add theirs).
    """
    with engine.begin() as connection:
        return rebuild_on(connection, since)


def rebuild_on(connection: Connection, since: datetime | None) -> RebuildResult:
    """``rebuild`` inside the caller's transaction."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(
            text("LOCK TABLE usage_hourly, usage_end_user_daily IN SHARE ROW EXCLUSIVE MODE")
        )
    hour_from = None if since is None else hour_of(since)
    day_from = None if since is None else day_of(since)
    clear_hours = delete(usage_hourly_table)
    clear_days = delete(end_user_daily_table)
    if hour_from is not None and day_from is not None:
        clear_hours = clear_hours.where(usage_hourly_table.c.hour >= hour_from)
        clear_days = clear_days.where(end_user_daily_table.c.day >= day_from)
    connection.execute(clear_hours)
    connection.execute(clear_days)
    hourly = connection.execute(_rebuild_hourly(dialect, hour_from))
    daily = connection.execute(_rebuild_daily(dialect, day_from))
    return RebuildResult(hourly_rows=hourly.rowcount, daily_rows=daily.rowcount)


def backfill_if_empty(engine: Engine) -> bool:
    """Rebuild the rollups when they are empty but records exist (just after migrating).

    Does nothing on a database migrated to a revision before the rollups.
    """
    if not inspect(engine).has_table(usage_hourly_table.name):
        return False
    with engine.connect() as connection:
        has_rollup = connection.scalar(select(exists(select(usage_hourly_table.c.hour))))
        has_records = connection.scalar(select(exists(select(RequestRecord.id))))
    if has_rollup or not has_records:
        return False
    rebuild(engine)
    return True


# -- the rebuild in SQL: the same classification as rollup_rows -------------------------

_record = RequestRecord.__table__.c


def _truncated(dialect: str, unit: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.date_trunc(unit, _record.created_at, "UTC", type_=DateTime(timezone=True))
    if dialect == "sqlite":
        return func.strftime(_SQLITE_HOUR if unit == "hour" else _SQLITE_DAY, _record.created_at)
    raise NotImplementedError(f"unsupported database dialect {dialect}")


def _bucket(column: ColumnElement[Any]) -> ColumnElement[Any]:
    whens: list[tuple[ColumnElement[bool], Any]] = [(column.is_(None), null())]
    whens += [(column < edge, bucket) for bucket, edge in enumerate(LATENCY_EDGES_MS)]
    return case(*whens, else_=len(LATENCY_EDGES_MS))


def _owner_columns() -> list[ColumnElement[Any]]:
    return [
        func.coalesce(_record.tenant_id, 0).label("tenant_id"),
        func.coalesce(_record.user_id, 0).label("user_id"),
        func.coalesce(_record.key_id, 0).label("key_id"),
    ]


def _per_record_sums() -> list[ColumnElement[Any]]:
    """Each record's contribution to the sums, mirroring ``_Sums.add``."""
    hit = _record.is_cached
    return [
        literal(1).label("requests"),
        case((hit, 1), else_=0).label("cache_hits"),
        case((hit, 0), else_=_record.prompt_tokens).label("prompt_tokens"),
        case((hit, 0), else_=_record.completion_tokens).label("completion_tokens"),
        case((hit, 0), else_=_record.cache_read_tokens).label("cache_read_tokens"),
        case((hit, 0), else_=_record.cache_write_tokens).label("cache_write_tokens"),
        case((hit, _record.prompt_tokens + _record.completion_tokens), else_=0).label(
            "cache_hit_tokens"
        ),
        _record.cost_usd.label("cost_usd"),
        case((hit, _record.cache_saved_usd), else_=0).label("response_cache_saved_usd"),
        case((hit, 0), else_=_record.cache_saved_usd).label("prompt_cache_saved_usd"),
    ]


SUM_COLUMNS = tuple(c.name for c in end_user_daily_table.columns if c.name not in DAILY_KEY)


def _rebuild_hourly(dialect: str, since: datetime | None) -> Insert:
    error_code = case(
        (func.coalesce(_record.error_code, "") != "", _record.error_code),
        (_record.status >= 400, literal("http_") + cast(_record.status, SqlString)),
        else_="",
    )
    per_record = select(
        _truncated(dialect, "hour").label("hour"),
        *_owner_columns(),
        func.coalesce(_record.model, "").label("model"),
        func.coalesce(_record.provider, "").label("provider"),
        error_code.label("error_code"),
        func.coalesce(_record.refusal_reason, "").label("refusal_reason"),
        case((_record.status >= 400, 1), else_=0).label("errors"),
        *_per_record_sums(),
        *(_bucket(_record[source]).label(f"b_{m}") for m, source in METRIC_SOURCES.items()),
    )
    if since is not None:
        per_record = per_record.where(_record.created_at >= since)
    rows = per_record.subquery("per_record")
    histogram_columns = [
        func.sum(case((rows.c[f"b_{metric}"] == bucket, 1))).label(latency_column(metric, bucket))
        for metric in LATENCY_METRICS
        for bucket in range(LATENCY_BUCKETS)
    ]
    keys = [rows.c[name] for name in HOURLY_KEY]
    grouped = select(
        *keys,
        func.sum(rows.c.errors).label("errors"),
        *(func.sum(rows.c[name]).label(name) for name in SUM_COLUMNS),
        *histogram_columns,
    ).group_by(*keys)
    names = [*HOURLY_KEY, "errors", *SUM_COLUMNS, *(c.name for c in histogram_columns)]
    return usage_hourly_table.insert().from_select(names, grouped)


def _rebuild_daily(dialect: str, since: datetime | None) -> Insert:
    per_record = select(
        _truncated(dialect, "day").label("day"),
        *_owner_columns(),
        func.coalesce(_record.end_user, "").label("end_user"),
        func.coalesce(_record.model, "").label("model"),
        func.coalesce(_record.provider, "").label("provider"),
        *_per_record_sums(),
    )
    if since is not None:
        per_record = per_record.where(_record.created_at >= since)
    rows = per_record.subquery("per_record")
    keys = [rows.c[name] for name in DAILY_KEY]
    grouped = select(*keys, *(func.sum(rows.c[name]).label(name) for name in SUM_COLUMNS))
    grouped = grouped.group_by(*keys)
    return end_user_daily_table.insert().from_select([*DAILY_KEY, *SUM_COLUMNS], grouped)
