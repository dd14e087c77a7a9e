"""Reading the usage rollups: which table answers a question, and grouped sums from it.

``Filters`` say what a dashboard shows. ``scope_for`` picks the smallest rollup that
has the columns a question needs: per day, ``usage_daily`` (tenants and models),
``usage_key_daily`` (users and keys), ``usage_hourly`` (latencies, models or
error types of a user or key),
``usage_end_user_daily`` (end users); per hour, ``usage_hourly``. Ranges shown per
day start at midnight UTC of their first day; ranges shown per hour start at the
hour their start falls in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    text,
)

from shared.rollup import DAILY, END_USER_DAILY, HOURLY, KEY_DAILY, Rollup, as_utc, day_of, hour_of

Granularity = Literal["hour", "day"]
HOURLY_RANGE = timedelta(days=3)


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


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for rollup reads, in one transaction. On PostgreSQL, JIT is off
    (compiling ~200 aggregates takes far longer than running them)."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL jit = off"))
            # Grouping by end user or key hashes ~100k groups: keep that in memory.
            connection.execute(text("SET LOCAL work_mem = '64MB'"))
        yield connection


def owner_conditions(table: Table, filters: Filters) -> list[ColumnElement[bool]]:
    """The tenant, user, key and model filters on a rollup table (not the time range)."""
    conditions: list[ColumnElement[bool]] = []
    for name, values in (
        ("tenant_id", filters.tenant_ids),
        ("user_id", filters.user_ids),
        ("key_id", filters.key_ids),
        ("model", filters.models),
    ):
        if values:
            conditions.append(table.c[name].in_(values))
    return conditions


@dataclass(frozen=True, slots=True)
class Scope:
    """A rollup table, the time grain of the answer, and the rows that count."""

    table: Table
    granularity: Granularity
    conditions: tuple[ColumnElement[bool], ...]

    def period(self, dialect: str) -> ColumnElement[Any]:
        """The start of the hour or day each row falls in (SQL literals, so that
        PostgreSQL sees the same expression in SELECT and GROUP BY)."""
        if "day" in self.table.c:
            return self.table.c.day
        if self.granularity == "hour":
            return self.table.c.hour
        day = DateTime(timezone=True)
        if dialect == "postgresql":
            unit: ColumnElement[str] = literal_column("'day'")
            utc: ColumnElement[str] = literal_column("'UTC'")
            return func.date_trunc(unit, self.table.c.hour, utc, type_=day)
        day_text: ColumnElement[str] = literal_column("'%Y-%m-%d 00:00:00.000000'")
        return func.strftime(day_text, self.table.c.hour, type_=day)


# The rollups that can answer per grain, smallest first.
_CANDIDATES: dict[Granularity, tuple[Rollup, ...]] = {
    "hour": (HOURLY,),
    "day": (DAILY, KEY_DAILY, HOURLY, END_USER_DAILY),
}


def scope_for(
    filters: Filters, needs: Iterable[str] = (), granularity: Granularity | None = None
) -> Scope:
    """The smallest rollup with the ``needs`` columns (and the filtered ones) at
    ``granularity`` (else the filters'); per day when no hourly rollup has them."""
    needed = set(needs) | {
        name
        for name, values in (
            ("tenant_id", filters.tenant_ids),
            ("user_id", filters.user_ids),
            ("key_id", filters.key_ids),
            ("model", filters.models),
        )
        if values
    }
    grains: list[Granularity] = [granularity or filters.granularity, "day"]
    for grain in grains:
        for rollup in _CANDIDATES[grain]:
            if needed <= set(rollup.table.c.keys()):
                return _scope(rollup, grain, filters)
    raise ValueError(f"no rollup has the columns {sorted(needed)}")


def _scope(rollup: Rollup, granularity: Granularity, filters: Filters) -> Scope:
    table = rollup.table
    start = day_of(filters.start) if granularity == "day" else hour_of(filters.start)
    time = table.c[rollup.grain]
    conditions = (time >= start, time < as_utc(filters.end), *owner_conditions(table, filters))
    return Scope(table, granularity, conditions)


def top_groups(
    connection: Connection,
    scope: Scope,
    group: ColumnElement[Any],
    rank_by: ColumnElement[Any],
    limit: int,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[Any]:
    """The ``limit`` groups with the largest sum of ``rank_by``."""
    query = (
        select(group)
        .where(*scope.conditions, *where)
        .group_by(group)
        .order_by(func.sum(rank_by).desc(), group)
        .limit(limit)
    )
    return list(connection.scalars(query))


def series(
    connection: Connection,
    scope: Scope,
    group: ColumnElement[Any] | None,
    sums: Mapping[str, ColumnElement[Any]],
    *,
    rank_by: str | None = None,
    top: int = 8,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[dict[str, Any]]:
    """Sums per period (and group). With ``rank_by``, groups outside the ``top`` by that
    sum are folded into one group, None. Rows: ``period``, ``group`` and the sums."""
    if group is None:
        group = null()
    elif rank_by is not None:
        ranked = top_groups(connection, scope, group, sums[rank_by], top, where)
        group = case((group.in_(ranked), group), else_=null())
    per_row = select(
        scope.period(connection.dialect.name).label("period"),
        group.label("grp"),
        *(value.label(name) for name, value in sums.items()),
    ).where(*scope.conditions, *where)
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


def sums_of(
    connection: Connection,
    scope: Scope,
    sums: Mapping[str, ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[str, Any]:
    """Sums over the whole scope (0 where no row counts)."""
    query = select(*(func.coalesce(func.sum(v), 0).label(k) for k, v in sums.items()))
    query = query.select_from(scope.table).where(*scope.conditions, *where)
    return dict(connection.execute(query).mappings().one())
