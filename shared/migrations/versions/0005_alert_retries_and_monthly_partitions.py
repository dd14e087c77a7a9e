"""alert retries; request log partitioned by month (PostgreSQL)

Revision ID: 0005
Revises: 0004

- ``alert_deliveries.next_attempt_at``: when a failed delivery is tried again (and the
  lease of the evaluator sending it).
- ``request_bodies.created_at``: the record's start, so bodies can be dropped by month
  and deleted before their records (``shared.retention``); indexed.
- PostgreSQL: ``request_records`` and ``request_bodies`` become tables partitioned by
  month of ``created_at`` (``shared.partitions``), keyed ``(id, created_at)`` and
  ``(record_id, created_at)``, without the foreign key from bodies to records. The
  rows already logged are copied into the new tables (the bodies' full-text document is
  computed again as they are: as long as migration 0004 took), partitions are made from
  the oldest record's month to three months ahead, and every other index and the
  generated search column are carried over as they were defined.
- SQLite: the tables stay plain; the new column is filled from the records.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MONTHS_AHEAD = 3
SQLITE_EPOCH = "1970-01-01 00:00:00.000000"


def upgrade() -> None:
    with op.batch_alter_table("alert_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()
    else:
        op.execute(
            "ALTER TABLE request_bodies ADD COLUMN created_at DATETIME NOT NULL "
            f"DEFAULT '{SQLITE_EPOCH}'"
        )
        op.execute(
            "UPDATE request_bodies SET created_at = (SELECT created_at FROM request_records "
            "WHERE request_records.id = request_bodies.record_id)"
        )
    op.create_index("ix_request_bodies_created_at", "request_bodies", ["created_at"])


def _partition_postgresql() -> None:
    bind = op.get_bind()
    indexes, search_expression = _log_indexes(bind), _search_expression(bind)
    oldest = bind.execute(sa.text("SELECT min(created_at) FROM request_records")).scalar()
    for table in ("request_records", "request_bodies"):
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_before_0005")

    op.execute(
        "CREATE TABLE request_records (LIKE request_records_before_0005 INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (created_at)"
    )
    search_column = (
        f", search_document tsvector GENERATED ALWAYS AS ({search_expression}) STORED"
        if search_expression
        else ""
    )
    op.execute(
        "CREATE TABLE request_bodies (record_id varchar(36) NOT NULL, "
        "created_at timestamptz NOT NULL, request_body text, response_body text"
        f"{search_column}) PARTITION BY RANGE (created_at)"
    )
    now = datetime.now(UTC)
    first = oldest.astimezone(UTC) if oldest is not None else now
    month_index = first.year * 12 + first.month - 1
    last_index = now.year * 12 + now.month - 1 + MONTHS_AHEAD
    for table in ("request_records", "request_bodies"):
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        for index in range(month_index, last_index + 1):
            year, month = index // 12, index % 12 + 1
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            op.execute(
                f"CREATE TABLE {table}_y{year:04d}m{month:02d} PARTITION OF {table} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )

    op.execute("INSERT INTO request_records SELECT * FROM request_records_before_0005")
    op.execute(
        "INSERT INTO request_bodies (record_id, created_at, request_body, response_body) "
        "SELECT b.record_id, r.created_at, b.request_body, b.response_body "
        "FROM request_bodies_before_0005 b "
        "JOIN request_records_before_0005 r ON r.id = b.record_id"
    )
    op.execute("DROP TABLE request_bodies_before_0005")
    op.execute("DROP TABLE request_records_before_0005")
    op.execute(
        "ALTER TABLE request_records ADD CONSTRAINT pk_request_records PRIMARY KEY (id, created_at)"
    )
    op.execute(
        "ALTER TABLE request_bodies ADD CONSTRAINT pk_request_bodies "
        "PRIMARY KEY (record_id, created_at)"
    )
    for table, rows in indexes.items():
        for _name, definition in rows:
            # The same index on the partitioned table: PostgreSQL makes one per partition.
            op.execute(definition.replace(f" ON public.{table} ", f" ON {table} "))


def downgrade() -> None:
    op.drop_index("ix_request_bodies_created_at", "request_bodies")
    if op.get_bind().dialect.name == "postgresql":
        _unpartition_postgresql()
    else:
        op.execute("ALTER TABLE request_bodies DROP COLUMN created_at")
    with op.batch_alter_table("alert_deliveries", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")


def _unpartition_postgresql() -> None:
    bind = op.get_bind()
    indexes, search_expression = _log_indexes(bind), _search_expression(bind)
    for table in ("request_records", "request_bodies"):
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
    op.execute("CREATE TABLE request_records (LIKE request_records_partitioned INCLUDING DEFAULTS)")
    op.execute("INSERT INTO request_records SELECT * FROM request_records_partitioned")
    search_column = (
        f", search_document tsvector GENERATED ALWAYS AS ({search_expression}) STORED"
        if search_expression
        else ""
    )
    op.execute(
        "CREATE TABLE request_bodies (record_id varchar(36) NOT NULL, "
        f"request_body text, response_body text{search_column})"
    )
    op.execute(
        "INSERT INTO request_bodies (record_id, request_body, response_body) "
        "SELECT record_id, request_body, response_body FROM request_bodies_partitioned"
    )
    op.execute("DROP TABLE request_bodies_partitioned")
    op.execute("DROP TABLE request_records_partitioned")
    op.execute("ALTER TABLE request_records ADD CONSTRAINT pk_request_records PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE request_bodies ADD CONSTRAINT pk_request_bodies PRIMARY KEY (record_id)"
    )
    op.execute(
        "ALTER TABLE request_bodies ADD CONSTRAINT fk_request_bodies_record_id_request_records "
        "FOREIGN KEY (record_id) REFERENCES request_records (id) ON DELETE CASCADE"
    )
    for table, rows in indexes.items():
        for _name, definition in rows:
            op.execute(_on_table(definition, table))


def _on_table(definition: str, table: str) -> str:
    """An index definition read from ``pg_indexes``, made again on the new ``table``."""
    for written in (f" ON ONLY public.{table} ", f" ON public.{table} "):
        definition = definition.replace(written, f" ON {table} ")
    return definition


def _log_indexes(bind: sa.engine.Connection) -> dict[str, list[tuple[str, str]]]:
    """Each log table's indexes (but its primary key) as (name, definition), to rebuild."""
    return {
        table: [
            (name, definition)
            for name, definition in bind.execute(
                sa.text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table "
                    "AND indexname NOT LIKE 'pk_%'"
                ),
                {"table": table},
            ).all()
        ]
        for table in ("request_records", "request_bodies")
    }


def _search_expression(bind: sa.engine.Connection) -> str | None:
    """The expression of request_bodies' generated search_document column (0004), if any."""
    return bind.execute(
        sa.text(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
            "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = 'request_bodies'::regclass AND a.attname = 'search_document'"
        )
    ).scalar()
