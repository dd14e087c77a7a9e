"""Retention: bodies and records older than their settings are deleted, old months dropped.

``METERGATE_RETENTION_BODIES_DAYS`` deletes request and response bodies (the metadata
stays); ``METERGATE_RETENTION_RECORDS_DAYS`` deletes whole records with their bodies,
flags and feedback. Bodies never outlive their records: without a bodies setting they
go with the records. Unset: kept forever. The usage rollups stay (dashboards and
billing keep their history).

How, without loading rows into memory:

1. On PostgreSQL, a month partition (``shared.partitions``) that ends at or before the
   cut-off is dropped whole (bodies first; records after their flags and feedback),
   with a short lock timeout: a drop that would wait on a long reader is left for the
   next run.
2. What is left before the cut-off (the month the cut-off falls in, the default
   partition, SQLite) is deleted in batches of ``batch_size`` rows, one short
   transaction each: ``DELETE … WHERE key IN (SELECT key … WHERE created_at < :cut_off
   LIMIT :n)``, until a batch comes back short.

``dry_run`` counts what would go and drops nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from shared.partitions import LOCK_TIMEOUT, monthly_partitions
from shared.rollup import as_utc

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RetentionReport:
    bodies_cut_off: datetime | None
    records_cut_off: datetime | None
    is_dry_run: bool = False
    bodies_deleted: int = 0
    records_deleted: int = 0
    flags_deleted: int = 0
    feedback_deleted: int = 0
    partitions_dropped: list[str] = field(default_factory=list)


def cut_offs(
    now: datetime, bodies_days: int | None, records_days: int | None
) -> tuple[datetime | None, datetime | None]:
    """(bodies, records) cut-offs: rows created before them go. Bodies go no later than
    their records."""
    now = as_utc(now)
    records = now - timedelta(days=records_days) if records_days is not None else None
    bodies = now - timedelta(days=bodies_days) if bodies_days is not None else None
    if records is not None and (bodies is None or bodies < records):
        bodies = records
    return bodies, records


def apply_retention(
    engine: Engine,
    now: datetime,
    *,
    bodies_days: int | None,
    records_days: int | None,
    batch_size: int = 5000,
    dry_run: bool = False,
) -> RetentionReport:
    """Delete (or with ``dry_run``, count) what the settings no longer keep."""
    bodies_cut_off, records_cut_off = cut_offs(now, bodies_days, records_days)
    report = RetentionReport(bodies_cut_off, records_cut_off, is_dry_run=dry_run)
    if bodies_cut_off is not None:
        _expire_bodies(engine, bodies_cut_off, batch_size, report)
    if records_cut_off is not None:
        _expire_records(engine, records_cut_off, batch_size, report)
    log.info(
        "event=retention_applied dry_run=%s bodies=%d records=%d flags=%d feedback=%d "
        "partitions_dropped=%s",
        dry_run,
        report.bodies_deleted,
        report.records_deleted,
        report.flags_deleted,
        report.feedback_deleted,
        ",".join(report.partitions_dropped) or "-",
    )
    return report


# -- bodies -----------------------------------------------------------------------------


def _expire_bodies(
    engine: Engine, cut_off: datetime, batch_size: int, report: RetentionReport
) -> None:
    if report.is_dry_run:
        report.partitions_dropped += _whole_months(engine, "request_bodies", cut_off)
        report.bodies_deleted += _count(
            engine, "SELECT count(*) FROM request_bodies WHERE created_at < :cut_off", cut_off
        )
        return
    for name in _whole_months(engine, "request_bodies", cut_off):
        rows = _count(engine, f"SELECT count(*) FROM {name}")
        if _drop(engine, name):
            report.partitions_dropped.append(name)
            report.bodies_deleted += rows
    key, columns = _key(engine, "record_id")
    statement = (
        f"DELETE FROM request_bodies WHERE {key} IN "
        f"(SELECT {columns} FROM request_bodies WHERE created_at < :cut_off LIMIT :n)"
    )
    report.bodies_deleted += _in_batches(engine, [statement], cut_off, batch_size)[0]


# -- records ----------------------------------------------------------------------------


def _expire_records(
    engine: Engine, cut_off: datetime, batch_size: int, report: RetentionReport
) -> None:
    if report.is_dry_run:
        report.partitions_dropped += _whole_months(engine, "request_records", cut_off)
        older = "SELECT id FROM request_records WHERE created_at < :cut_off"
        report.records_deleted += _count(engine, f"SELECT count(*) FROM ({older}) o", cut_off)
        report.flags_deleted += _count(
            engine, f"SELECT count(*) FROM flags WHERE record_id IN ({older})", cut_off
        )
        report.feedback_deleted += _count(
            engine, f"SELECT count(*) FROM feedback WHERE record_id IN ({older})", cut_off
        )
        return
    for name in _whole_months(engine, "request_records", cut_off):
        with engine.begin() as connection:
            for table, attribute in (("flags", "flags_deleted"), ("feedback", "feedback_deleted")):
                deleted = connection.execute(
                    text(f"DELETE FROM {table} WHERE record_id IN (SELECT id FROM {name})")
                ).rowcount
                setattr(report, attribute, getattr(report, attribute) + deleted)
        rows = _count(engine, f"SELECT count(*) FROM {name}")
        if _drop(engine, name):
            report.partitions_dropped.append(name)
            report.records_deleted += rows
    # The same batch in each statement of a transaction: the oldest n, in a total order.
    batch = "FROM request_records WHERE created_at < :cut_off ORDER BY created_at, id LIMIT :n"
    key, columns = _key(engine, "id")
    flags, feedback, bodies, records = _in_batches(
        engine,
        [
            f"DELETE FROM flags WHERE record_id IN (SELECT id {batch})",
            f"DELETE FROM feedback WHERE record_id IN (SELECT id {batch})",
            f"DELETE FROM request_bodies WHERE record_id IN (SELECT id {batch})",
            f"DELETE FROM request_records WHERE {key} IN (SELECT {columns} {batch})",
        ],
        cut_off,
        batch_size,
    )
    report.flags_deleted += flags
    report.feedback_deleted += feedback
    report.bodies_deleted += bodies
    report.records_deleted += records


# -- helpers ----------------------------------------------------------------------------


def _key(engine: Engine, id_column: str) -> tuple[str, str]:
    """The row key to delete by: SQLite's rowid, PostgreSQL's (id, partition column)."""
    if engine.dialect.name == "sqlite":
        return "rowid", "rowid"
    return f"({id_column}, created_at)", f"{id_column}, created_at"


def _whole_months(engine: Engine, table: str, cut_off: datetime) -> list[str]:
    """Names of ``table``'s month partitions that end at or before ``cut_off``."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        return [p.name for p in monthly_partitions(connection, table) if p.end <= cut_off]


def _drop(engine: Engine, name: str) -> bool:
    """Drop one partition; False (logged, tried next run) when its lock is not had soon."""
    try:
        with engine.begin() as connection:
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
    except OperationalError as exc:  # lock_not_available: a long reader holds it
        log.warning("event=partition_drop_postponed partition=%s error=%s", name, exc.orig)
        return False
    return True


def _in_batches(
    engine: Engine, statements: list[str], cut_off: datetime, batch_size: int
) -> list[int]:
    """Run ``statements`` (the last one decides when to stop) in one transaction per
    batch until the last deletes fewer than ``batch_size`` rows; rows deleted by each."""
    totals = [0] * len(statements)
    while True:
        with engine.begin() as connection:
            counts = [
                _execute(connection, statement, cut_off, batch_size) for statement in statements
            ]
        totals = [total + count for total, count in zip(totals, counts, strict=True)]
        if counts[-1] < batch_size:
            return totals


def _execute(connection: Connection, statement: str, cut_off: datetime, batch_size: int) -> int:
    result = connection.execute(
        text(statement), {"cut_off": _bound(connection, cut_off), "n": batch_size}
    )
    return max(result.rowcount, 0)


def _bound(connection: Connection, at: datetime) -> object:
    """``at`` as the column stores it: SQLAlchemy's SQLite text form is naive UTC."""
    if connection.dialect.name == "sqlite":
        return as_utc(at).strftime("%Y-%m-%d %H:%M:%S.%f")
    return as_utc(at)


def _count(engine: Engine, statement: str, cut_off: datetime | None = None) -> int:
    with engine.connect() as connection:
        params = {} if cut_off is None else {"cut_off": _bound(connection, cut_off)}
        return int(connection.execute(text(statement), params).scalar() or 0)
