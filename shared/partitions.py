"""Monthly partitions of the request log on PostgreSQL (migration 0005).

``request_records`` and ``request_bodies`` are partitioned by range of ``created_at``
(the record's start, UTC), one partition per calendar month named
``<table>_yYYYYmMM``, plus ``<table>_default`` for rows outside every month made so
far (a spool replayed from long ago, a clock far off): no write ever fails for want of
a partition. Old months are dropped whole by ``shared.retention``.

Keys: a partitioned table's primary key must hold the partition column, so the keys
are ``(id, created_at)`` and ``(record_id, created_at)``. Writes stay idempotent: a
record written twice (a spool replayed after a crash) carries the same id and
``created_at``, and ``ON CONFLICT DO NOTHING`` skips it. Ids are UUIDs, unique on
their own; the ORM still knows a record by its id. There is no foreign key from
bodies to records (PostgreSQL cannot have one to a key without the partition
column); bodies carry their record's ``created_at`` and go with it.

SQLite keeps plain tables (and the foreign key of migration 0001, which only SQLite
reads: the models leave it out, and ``include_in_autogenerate`` ignores it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from shared.search import include_in_autogenerate as _search_include

log = logging.getLogger(__name__)

PARTITIONED_TABLES = ("request_bodies", "request_records")  # bodies first when dropping
MONTHS_AHEAD = 3
LOCK_TIMEOUT = "5s"
_PARTITION_NAME = re.compile(r"^(request_records|request_bodies)_(?:y(\d{4})m(\d{2})|default)$")
# The foreign key of migration 0001 that SQLite keeps and the models no longer describe.
SQLITE_BODY_FOREIGN_KEY = "fk_request_bodies_record_id_request_records"


@dataclass(frozen=True, slots=True)
class Partition:
    table: str
    name: str
    start: datetime  # inclusive
    end: datetime  # exclusive


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def add_months(at: datetime, months: int) -> tuple[int, int]:
    index = at.year * 12 + at.month - 1 + months
    return index // 12, index % 12 + 1


def partition_name(table: str, year: int, month: int) -> str:
    return f"{table}_y{year:04d}m{month:02d}"


def create_month(connection: Connection, table: str, year: int, month: int) -> bool:
    """Create one month's partition of ``table`` unless it exists; False when the default
    partition already holds rows of that month (they stay there, and are deleted by
    retention row by row)."""
    start, end = month_bounds(year, month)
    statement = (
        f"CREATE TABLE IF NOT EXISTS {partition_name(table, year, month)} PARTITION OF {table} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )
    try:
        with connection.begin_nested():
            connection.execute(text(statement))
    except DBAPIError as exc:  # check_violation: rows of that month in the default partition
        log.warning(
            "event=partition_not_created table=%s month=%04d-%02d error=%s",
            table,
            year,
            month,
            type(exc.orig).__name__,
        )
        return False
    return True


def ensure_partitions(engine: Engine, now: datetime, months_ahead: int = MONTHS_AHEAD) -> None:
    """Partitions for this month and ``months_ahead`` after it (PostgreSQL; else nothing)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        for offset in range(months_ahead + 1):
            year, month = add_months(now, offset)
            for table in reversed(PARTITIONED_TABLES):
                create_month(connection, table, year, month)


def monthly_partitions(connection: Connection, table: str) -> list[Partition]:
    """The month partitions of ``table``, oldest first (the default partition left out)."""
    names = connection.execute(
        text(
            "SELECT child.relname FROM pg_inherits "
            "JOIN pg_class parent ON parent.oid = pg_inherits.inhparent "
            "JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "WHERE parent.relname = :table"
        ),
        {"table": table},
    ).scalars()
    partitions = []
    for name in names:
        match = _PARTITION_NAME.match(name)
        if match and match.group(2):
            start, end = month_bounds(int(match.group(2)), int(match.group(3)))
            partitions.append(Partition(table, name, start, end))
    return sorted(partitions, key=lambda p: p.start)


def include_in_autogenerate(name: str | None, type_: str, parent_names: Any = None) -> bool:
    """Alembic's ``include_name`` hook: the search index's objects (``shared.search``), the
    partitions and SQLite's old foreign key are not described by the models."""
    if name is not None:
        if type_ == "table" and _PARTITION_NAME.match(name):
            return False
        if type_ == "foreign_key_constraint" and name == SQLITE_BODY_FOREIGN_KEY:
            return False
    return _search_include(name, type_, parent_names)
