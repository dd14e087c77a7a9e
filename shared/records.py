"""The record of one call, and its idempotent write to SQL.

Records are keyed by the gateway's own UUID, and written with
``INSERT ... ON CONFLICT DO NOTHING``: writing a batch twice (after a crash
between commit and spool clean-up) never duplicates a record. The records an
insert really added (``RETURNING id``) are added to the usage rollups in the
same transaction, so a replayed batch never counts twice there either.

On PostgreSQL a batch is first copied (``COPY``) into temporary staging tables, then
inserted from them with one ``INSERT ... SELECT`` each, and the rollups are summed
from the staged rows in SQL (``shared.rollup.staged_upsert_sql``): the writer shares
its process with the calls, and building multi-row ``INSERT``s of a batch (hundreds
of parameters per record for the rollups) cost it more CPU than the calls' own work.
SQLite takes the same rows through SQLAlchemy's multi-row ``INSERT``s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, overload

import orjson
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Connection, Engine, Insert, MetaData, String, Table
from sqlalchemy.dialects import postgresql, sqlite

from shared.models import Flag, RequestBody, RequestRecord
from shared.rollup import ROLLUPS, add_records, as_utc, staged_upsert_sql

BODY_FIELDS = ("request_body", "response_body")
NON_COLUMN_FIELDS = {*BODY_FIELDS, "flag_reasons"}


class CallRecord(BaseModel):
    """Everything logged about one call. Crosses from the proxy to the writer and spool."""

    model_config = ConfigDict(extra="forbid")

    id: str
    client_request_id: str | None = None
    created_at: datetime
    finished_at: datetime
    tenant_id: int | None = None
    user_id: int | None = None
    key_id: int | None = None
    dialect: str
    endpoint: str
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    is_stream: bool = False
    status: int
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    session_id: str | None = None
    end_user: str | None = None
    latency_ms: float
    upstream_latency_ms: float | None = None
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    is_cached: bool = False
    cache_saved_usd: Decimal = Decimal(0)
    refusal_reason: str | None = None
    is_flagged: bool = False
    output_valid: bool | None = None
    answered_model: str | None = None
    response_id: str | None = None
    replay_of: str | None = None
    upstream_request_id: str | None = None
    attempts: list[dict[str, Any]] | None = None
    request_body: str | None = None
    response_body: str | None = None
    # Automatic flags ("screening: <rule>", "upstream_error", …), written to ``flags``.
    flag_reasons: list[str] | None = None


_STRING_LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in RequestRecord.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


_RECORD_COLUMNS = tuple(column.name for column in RequestRecord.__table__.columns)
_BODY_COLUMNS = tuple(column.name for column in RequestBody.__table__.columns)
_JSON_COLUMNS = {"attempts"}

# PostgreSQL staging: temporary tables shaped like the real ones, emptied at commit.
# A transaction that rolls back takes their creation with it; the next one makes them.
_STAGED_RECORDS = Table(
    "metergate_staged_records",
    MetaData(),
    *(Column(column.name, column.type) for column in RequestRecord.__table__.columns),
)
_STAGED_BODIES = "metergate_staged_bodies"
_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGED_RECORDS.name}"
    " (LIKE request_records) ON COMMIT DELETE ROWS;"
    f" CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGED_BODIES}"
    " (LIKE request_bodies) ON COMMIT DELETE ROWS;"
    # Planning ~200 aggregates over an unanalysed table could otherwise start the JIT.
    " SET LOCAL jit = off"
)
_COPY_RECORDS = f"COPY {_STAGED_RECORDS.name} ({', '.join(_RECORD_COLUMNS)}) FROM STDIN"
_COPY_BODIES = f"COPY {_STAGED_BODIES} ({', '.join(_BODY_COLUMNS)}) FROM STDIN"
_INSERT_STAGED_RECORDS = (
    f"INSERT INTO request_records ({', '.join(_RECORD_COLUMNS)})"
    f" SELECT {', '.join(_RECORD_COLUMNS)} FROM {_STAGED_RECORDS.name}"
    " ORDER BY id ON CONFLICT DO NOTHING RETURNING id"  # in id order: no deadlocks
)
_UNSTAGE_OLD = f"DELETE FROM {_STAGED_RECORDS.name} WHERE NOT (id = ANY(%s))"
_INSERT_STAGED_BODIES = (
    f"INSERT INTO request_bodies ({', '.join(_BODY_COLUMNS)})"
    f" SELECT {', '.join(_BODY_COLUMNS)} FROM {_STAGED_BODIES}"
    " ORDER BY record_id ON CONFLICT DO NOTHING"
)


def _insert(engine: Engine, table: Any) -> Insert:
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {engine.dialect.name}")


def write_records(
    engine: Engine, records: Sequence[CallRecord], pause: Callable[[], None] | None = None
) -> None:
    """Write a batch in one transaction; records already present are skipped.

    Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot take them;
    the caller keeps the batch (spools it) and tries again later. ``pause`` (the record
    writer's ``Pacer``) is called after each record's rows are built and, on PostgreSQL,
    after each row is copied.
    """
    pause = pause or _no_pause
    if not records:
        return
    metadata_rows = []
    body_rows = []
    for record in records:
        row = record.model_dump(exclude=NON_COLUMN_FIELDS)
        row["is_flagged"] = record.is_flagged or bool(record.flag_reasons)
        # SQLite keeps wall-clock text: store UTC so it sorts and rolls up like PostgreSQL.
        row["created_at"], row["finished_at"] = (
            as_utc(record.created_at),
            as_utc(record.finished_at),
        )
        for name, length in _STRING_LENGTHS.items():
            value = row.get(name)
            if isinstance(value, str):
                row[name] = _clean_text(value)[:length]
        if row["error_message"] is not None:
            row["error_message"] = _clean_text(row["error_message"])
        metadata_rows.append(row)
        body_rows.append(
            {
                "record_id": record.id,
                "created_at": row["created_at"],
                "request_body": _clean_text(record.request_body),
                "response_body": _clean_text(record.response_body),
            }
        )
        pause()
    flag_rows = [
        {
            "record_id": record.id,
            "source": "auto",
            "reason": reason[:200],
            "status": "open",
            "created_at": record.finished_at,
            "updated_at": record.finished_at,
        }
        for record in records
        for reason in dict.fromkeys(record.flag_reasons or ())
    ]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            _write_staged(connection, metadata_rows, body_rows, pause)
        else:
            inserted = connection.execute(
                _insert(engine, RequestRecord.__table__).returning(RequestRecord.__table__.c.id),
                metadata_rows,
            )
            new_ids = set(inserted.scalars())
            add_records(connection, [row for row in metadata_rows if row["id"] in new_ids])
            connection.execute(_insert(engine, RequestBody.__table__), body_rows)
        if flag_rows:
            connection.execute(_insert(engine, Flag.__table__), flag_rows)


def prepare_writes(engine: Engine) -> None:
    """Build the PostgreSQL rollup statements now (~40 kB of SQL each), not at the first
    batch: called by a writer thread as it starts."""
    if engine.dialect.name == "postgresql":
        for rollup in ROLLUPS:
            staged_upsert_sql(rollup, _STAGED_RECORDS)


def _write_staged(
    connection: Connection,
    metadata_rows: Sequence[dict[str, Any]],
    body_rows: Sequence[dict[str, Any]],
    pause: Callable[[], None],
) -> None:
    """PostgreSQL: COPY the batch into staging, insert what is new, sum it into the rollups."""
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(_STAGE)
        with cursor.copy(_COPY_RECORDS) as copy:
            for row in metadata_rows:
                copy.write_row([_copy_value(name, row[name]) for name in _RECORD_COLUMNS])
                pause()
        cursor.execute(_INSERT_STAGED_RECORDS)
        new_ids = [new_id for (new_id,) in cursor.fetchall()]
        if new_ids:
            if len(new_ids) < len(metadata_rows):  # a replayed batch: count only the new
                cursor.execute(_UNSTAGE_OLD, [new_ids])
            for rollup in ROLLUPS:
                cursor.execute(staged_upsert_sql(rollup, _STAGED_RECORDS))
        with cursor.copy(_COPY_BODIES) as copy:
            for row in body_rows:
                copy.write_row([row[name] for name in _BODY_COLUMNS])
                pause()
        cursor.execute(_INSERT_STAGED_BODIES)


def _no_pause() -> None:
    pass


def _copy_value(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS and value is not None:
        return orjson.dumps(value).decode()
    return value


@overload
def _clean_text(text: str) -> str: ...
@overload
def _clean_text(text: None) -> None: ...
def _clean_text(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL or lone surrogates; keep everything else."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    return text.encode("utf-8", "replace").decode("utf-8")
