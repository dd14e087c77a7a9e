"""The usage rollups the dashboards read, kept up to date as records are written.

Three tables (``shared.models``), each a set of sums per time bucket and key:

- ``usage_hourly``: hour x tenant x user x key x model x provider x error code x
  refusal reason; counts, tokens, cost, savings and latency histograms.
- ``usage_daily``: the same per day and tenant, without users and keys, so that
  month-long charts read thousands of rows, not hundreds of thousands.
- ``usage_key_daily``: day x tenant x user x key; sums only (spend by user or key,
  quotas, billing).
- ``usage_end_user_daily``: day x tenant x user x key x end user x model x provider;
  sums only (end users are many).
- ``usage_end_user_monthly``: month x tenant x user x key x end user; sums only
  (upper bounds that find the top end users of a long range; ``shared.end_users``).

``add_records`` is called by ``shared.records.write_records`` in the transaction
that inserts the records, with only the rows that insert really added, so a
replayed batch never counts twice. ``rebuild`` recomputes the rollups from the raw
records in SQL; both paths classify a record the same way, which the tests check by
comparing a rollup built incrementally with a rebuilt one.

Hours and days are UTC. A missing id is stored as 0 and a missing name as "".
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    Select,
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
    end_user_monthly_table,
    latency_column,
    usage_daily_table,
    usage_hourly_table,
    usage_key_daily_table,
)

# The request_records column measured by each latency histogram.
METRIC_SOURCES = {
    "total": "latency_ms",
    "upstream": "upstream_latency_ms",
    "overhead": "overhead_ms",
    "ttft": "ttft_ms",
}
SUM_COLUMNS = (
    "requests",
    "errors",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_hit_tokens",
    "cost_usd",
    "response_cache_saved_usd",
    "prompt_cache_saved_usd",
)
_ZERO: ColumnElement[int] = literal_column("0")  # inline: ~180 bound zeros per row cost time
_SQLITE_FORMATS = {  # SQLAlchemy's SQLite DATETIME text format
    "hour": "%Y-%m-%d %H:00:00.000000",
    "day": "%Y-%m-%d 00:00:00.000000",
    "month": "%Y-%m-01 00:00:00.000000",
}


def as_utc(at: datetime) -> datetime:
    """``at`` in UTC; naive datetimes are taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def hour_of(at: datetime) -> datetime:
    return as_utc(at).replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> datetime:
    return as_utc(at).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start_of(at: datetime) -> datetime:
    """Midnight UTC on the first day of the month ``at`` falls in."""
    return day_of(at).replace(day=1)


def latency_bucket(value_ms: float) -> int:
    """The histogram bucket of a latency (see ``shared.models.LATENCY_EDGES_MS``)."""
    return bisect_right(LATENCY_EDGES_MS, value_ms)


def error_code_of(error_code: str | None, status: int) -> str:
    """The rollup's error type: the record's code, ``http_<status>`` without one, or ""."""
    if error_code:
        return error_code
    return f"http_{status}" if status >= 400 else ""


@dataclass(frozen=True, slots=True)
class Rollup:
    """One rollup table: its time grain, the record fields it is keyed by, its sums."""

    table: Table
    grain: str  # "hour", "day" or "month", also the name of the time column
    keys: tuple[str, ...]  # after the time column
    has_latencies: bool

    @property
    def key_columns(self) -> tuple[str, ...]:
        return (self.grain, *self.keys)


HOURLY = Rollup(
    usage_hourly_table,
    "hour",
    ("tenant_id", "user_id", "key_id", "model", "provider", "error_code", "refusal_reason"),
    has_latencies=True,
)
DAILY = Rollup(
    usage_daily_table,
    "day",
    ("tenant_id", "model", "provider", "error_code", "refusal_reason"),
    has_latencies=True,
)
KEY_DAILY = Rollup(
    usage_key_daily_table, "day", ("tenant_id", "user_id", "key_id"), has_latencies=False
)
END_USER_DAILY = Rollup(
    end_user_daily_table,
    "day",
    ("tenant_id", "user_id", "key_id", "end_user", "model", "provider"),
    has_latencies=False,
)
END_USER_MONTHLY = Rollup(
    end_user_monthly_table,
    "month",
    ("tenant_id", "user_id", "key_id", "end_user"),
    has_latencies=False,
)
# Also the order in which a batch's rows are locked.
ROLLUPS = (HOURLY, DAILY, KEY_DAILY, END_USER_DAILY, END_USER_MONTHLY)

_TRUNCATE: dict[str, Callable[[datetime], datetime]] = {
    "hour": hour_of,
    "day": day_of,
    "month": month_start_of,
}
_KEY_VALUES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "tenant_id": lambda row: row["tenant_id"] or 0,
    "user_id": lambda row: row["user_id"] or 0,
    "key_id": lambda row: row["key_id"] or 0,
    "model": lambda row: row["model"] or "",
    "provider": lambda row: row["provider"] or "",
    "end_user": lambda row: row["end_user"] or "",
    "error_code": lambda row: error_code_of(row["error_code"], row["status"]),
    "refusal_reason": lambda row: row["refusal_reason"] or "",
}


class _Sums:
    """One rollup row's sums, as ``add_records`` accumulates them."""

    def __init__(self, has_latencies: bool) -> None:
        self.values: dict[str, Any] = dict.fromkeys(SUM_COLUMNS, 0)
        for name in ("cost_usd", "response_cache_saved_usd", "prompt_cache_saved_usd"):
            self.values[name] = Decimal(0)
        self.histograms: dict[str, list[int]] | None = None
        if has_latencies:
            self.histograms = {metric: [0] * LATENCY_BUCKETS for metric in LATENCY_METRICS}

    def add(self, row: Mapping[str, Any]) -> None:
        values = self.values
        values["requests"] += 1
        if row["status"] >= 400:
            values["errors"] += 1
        values["cost_usd"] += Decimal(row["cost_usd"])
        saved = Decimal(row["cache_saved_usd"])
        if row["is_cached"]:
            values["cache_hits"] += 1
            values["cache_hit_tokens"] += row["prompt_tokens"] + row["completion_tokens"]
            values["response_cache_saved_usd"] += saved
        else:
            for name in ("prompt_tokens", "completion_tokens"):
                values[name] += row[name]
            for name in ("cache_read_tokens", "cache_write_tokens"):
                values[name] += row[name]
            values["prompt_cache_saved_usd"] += saved
        if self.histograms is None:
            return
        for metric, source in METRIC_SOURCES.items():
            value = row[source]
            if value is not None:
                self.histograms[metric][latency_bucket(value)] += 1

    def columns(self) -> dict[str, Any]:
        columns = dict(self.values)
        for metric, counts in (self.histograms or {}).items():
            for bucket, count in enumerate(counts):
                columns[latency_column(metric, bucket)] = count or None
        return columns


def rollup_rows(rollup: Rollup, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate ``request_records`` rows into ``rollup``'s rows, sorted by key (so that
    concurrent writers lock rollup rows in the same order and cannot deadlock)."""
    truncate = _TRUNCATE[rollup.grain]
    getters = [_KEY_VALUES[name] for name in rollup.keys]
    sums: dict[tuple[Any, ...], _Sums] = {}
    for row in records:
        key = (truncate(row["created_at"]), *(get(row) for get in getters))
        if key not in sums:
            sums[key] = _Sums(rollup.has_latencies)
        sums[key].add(row)
    return [
        dict(zip(rollup.key_columns, key, strict=True)) | sums[key].columns()
        for key in sorted(sums)
    ]


def add_records(connection: Connection, records: Sequence[Mapping[str, Any]]) -> None:
    """Add newly inserted ``request_records`` rows to every rollup, in the caller's
    transaction. Raises what the database raises; the caller's transaction then rolls
    back the records too."""
    if not records:
        return
    for rollup in ROLLUPS:
        upsert = _upsert(connection.dialect.name, rollup)
        connection.execute(upsert, rollup_rows(rollup, records))


@cache  # ~200 columns: build each statement once (SQLAlchemy caches its compiled form)
def _upsert(dialect: str, rollup: Rollup) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET every sum to old + new (NULL is zero)."""
    statement: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        statement = postgresql.insert(rollup.table)
    elif dialect == "sqlite":
        statement = sqlite.insert(rollup.table)
    else:
        raise NotImplementedError(f"unsupported database dialect {dialect}")
    return statement.on_conflict_do_update(
        index_elements=list(rollup.key_columns), set_=_added_sums(rollup, statement.excluded)
    )


def _added_sums(rollup: Rollup, excluded: Any) -> dict[str, ColumnElement[Any]]:
    """Each sum column set to its old value plus the new row's (a NULL counts as zero)."""
    updates: dict[str, ColumnElement[Any]] = {}
    for column in rollup.table.columns:
        if column.name in rollup.key_columns:
            continue
        if column.nullable:
            total = func.coalesce(column, _ZERO) + func.coalesce(excluded[column.name], _ZERO)
            updates[column.name] = func.nullif(total, _ZERO)
        else:
            updates[column.name] = column + excluded[column.name]
    return updates


@cache
def staged_upsert_sql(rollup: Rollup, staged: Table) -> str:
    """PostgreSQL: one statement that adds every record in ``staged`` to ``rollup``.

    ``staged`` has ``request_records``' columns and holds only records just inserted
    (``shared.records`` stages a batch in a temporary table). The sums are taken in SQL,
    the same expressions ``rebuild`` uses, and the rows are upserted in key order (so
    that concurrent writers lock rollup rows in the same order and cannot deadlock).
    The text has no parameters: the driver sends it as is, with nothing to convert.
    """
    grouped = _grouped("postgresql", rollup, staged, None)
    keys = list(grouped.selected_columns)[: len(rollup.key_columns)]
    names = [column.name for column in grouped.selected_columns]
    statement = postgresql.insert(rollup.table).from_select(names, grouped.order_by(*keys))
    statement = statement.on_conflict_do_update(
        index_elements=list(rollup.key_columns), set_=_added_sums(rollup, statement.excluded)
    )
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


# -- rebuilding from the raw records ----------------------------------------------------


def rebuild(engine: Engine, since: datetime | None = None) -> None:
    """Recompute every rollup from the raw records created from ``since`` (all if None).

    Each rollup is rebuilt from the hour, day or month ``since`` falls in.
    On PostgreSQL the rollup tables are locked for the transaction, so records written
    meanwhile are counted exactly once (their writers wait, then add them).
    """
    with engine.begin() as connection:
        rebuild_on(connection, since)


def rebuild_on(connection: Connection, since: datetime | None) -> None:
    """``rebuild`` inside the caller's transaction."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        names = ", ".join(rollup.table.name for rollup in ROLLUPS)
        connection.execute(text(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE"))
        # JIT compiling ~200 aggregates takes minutes; running them takes seconds.
        connection.execute(text("SET LOCAL jit = off"))
    for rollup in ROLLUPS:
        start = None if since is None else _TRUNCATE[rollup.grain](since)
        clear = delete(rollup.table)
        if start is not None:
            clear = clear.where(rollup.table.c[rollup.grain] >= start)
        connection.execute(clear)
        connection.execute(_rebuild(dialect, rollup, start))


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


_RECORDS: Table = RequestRecord.__table__  # type: ignore[assignment]


def _truncated(dialect: str, grain: str, records: Table) -> ColumnElement[Any]:
    created_at = records.c.created_at
    if dialect == "postgresql":
        return func.date_trunc(grain, created_at, "UTC", type_=DateTime(timezone=True))
    if dialect == "sqlite":
        return func.strftime(_SQLITE_FORMATS[grain], created_at)
    raise NotImplementedError(f"unsupported database dialect {dialect}")


def _bucket(dialect: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The histogram bucket of ``column``, as ``latency_bucket`` computes it."""
    if dialect == "postgresql":  # a binary search: the number of edges <= the value
        edges = postgresql.array([literal(edge) for edge in LATENCY_EDGES_MS])
        return func.width_bucket(column, edges)
    whens: list[tuple[ColumnElement[bool], Any]] = [(column.is_(None), null())]
    whens += [(column < edge, bucket) for bucket, edge in enumerate(LATENCY_EDGES_MS)]
    return case(*whens, else_=len(LATENCY_EDGES_MS))


def _sql_key(name: str, records: Table) -> ColumnElement[Any]:
    """A rollup key from a record, as ``_KEY_VALUES`` computes it."""
    record = records.c
    if name == "error_code":
        return case(
            (func.coalesce(record.error_code, "") != "", record.error_code),
            (record.status >= 400, literal("http_") + cast(record.status, SqlString)),
            else_="",
        )
    default = 0 if name.endswith("_id") else ""
    return func.coalesce(record[name], default)


def _per_record_sums(records: Table) -> list[ColumnElement[Any]]:
    """Each record's contribution to the sums, mirroring ``_Sums.add``."""
    record = records.c
    hit = record.is_cached
    return [
        literal(1).label("requests"),
        case((record.status >= 400, 1), else_=0).label("errors"),
        case((hit, 1), else_=0).label("cache_hits"),
        case((hit, 0), else_=record.prompt_tokens).label("prompt_tokens"),
        case((hit, 0), else_=record.completion_tokens).label("completion_tokens"),
        case((hit, 0), else_=record.cache_read_tokens).label("cache_read_tokens"),
        case((hit, 0), else_=record.cache_write_tokens).label("cache_write_tokens"),
        case((hit, record.prompt_tokens + record.completion_tokens), else_=0).label(
            "cache_hit_tokens"
        ),
        record.cost_usd.label("cost_usd"),
        case((hit, record.cache_saved_usd), else_=0).label("response_cache_saved_usd"),
        case((hit, 0), else_=record.cache_saved_usd).label("prompt_cache_saved_usd"),
    ]


def _grouped(dialect: str, rollup: Rollup, records: Table, since: datetime | None) -> Select[Any]:
    """The rollup's rows, summed in SQL from ``records`` created from ``since``."""
    per_record_columns = [
        _truncated(dialect, rollup.grain, records).label(rollup.grain),
        *(_sql_key(name, records).label(name) for name in rollup.keys),
        *_per_record_sums(records),
    ]
    if rollup.has_latencies:
        per_record_columns += [
            _bucket(dialect, records.c[source]).label(f"b_{metric}")
            for metric, source in METRIC_SOURCES.items()
        ]
    per_record = select(*per_record_columns)
    if since is not None:
        per_record = per_record.where(records.c.created_at >= since)
    # OFFSET 0 keeps the planner from inlining the bucket expressions into every sum.
    rows = per_record.offset(0).subquery("per_record")
    sums = [func.sum(rows.c[name]).label(name) for name in SUM_COLUMNS]
    if rollup.has_latencies:
        sums += [
            func.sum(case((rows.c[f"b_{metric}"] == bucket, 1))).label(
                latency_column(metric, bucket)
            )
            for metric in LATENCY_METRICS
            for bucket in range(LATENCY_BUCKETS)
        ]
    keys = [rows.c[name] for name in rollup.key_columns]
    return select(*keys, *sums).group_by(*keys)


def _rebuild(dialect: str, rollup: Rollup, since: datetime | None) -> Insert:
    """INSERT INTO the rollup SELECT its sums from the records created from ``since``."""
    grouped = _grouped(dialect, rollup, _RECORDS, since)
    return rollup.table.insert().from_select([c.name for c in grouped.selected_columns], grouped)
