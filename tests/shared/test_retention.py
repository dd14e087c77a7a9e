"""Retention deletes exactly what it should; partitions keep writes idempotent and drop whole.

Each test gets a database of its own (retention deletes across the whole log).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, text

from proxy.cli import main
from shared.background import BackgroundJob
from shared.db import make_engine, upgrade
from shared.models import Feedback, Flag, RequestBody, RequestRecord, usage_key_daily_table
from shared.partitions import create_month, ensure_partitions, monthly_partitions
from shared.records import write_records
from shared.retention import apply_retention
from shared.settings import Settings
from tests.shared.usage_records import call
from tests.support import create_pg_database, drop_pg_database

NOW = datetime(2025, 6, 20, 12, tzinfo=UTC)
# Records keep 40 days (cut-off 2025-05-11 12:00), bodies 20 (2025-05-31 12:00).
GROUPS = {
    "last_year": datetime(2024, 6, 1, tzinfo=UTC),  # no month partition: the default one
    "january": datetime(2025, 1, 15, tzinfo=UTC),  # whole months before the cut-off
    "march": datetime(2025, 3, 10, tzinfo=UTC),
    "early_may": datetime(2025, 5, 5, tzinfo=UTC),  # the month the cut-off falls in
    "late_may": datetime(2025, 5, 20, tzinfo=UTC),  # record kept, body past its 20 days
    "june": datetime(2025, 6, 10, tzinfo=UTC),  # kept whole
}
PER_GROUP = 3


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'retention.sqlite3'}"
        if request.param == "sqlite"
        else create_pg_database()
    )
    upgrade(url)
    db = make_engine(url)
    try:
        yield db
    finally:
        db.dispose()
        if request.param == "postgresql":
            drop_pg_database(url)


def months_of_2025(engine: Engine) -> None:
    """The partitions a deployment running since January would have made ahead."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            for month in range(1, 7):
                assert create_month(connection, "request_records", 2025, month)
                assert create_month(connection, "request_bodies", 2025, month)


def log(engine: Engine) -> dict[str, list[str]]:
    """PER_GROUP records per group, each with a body, an automatic flag and a feedback row."""
    ids: dict[str, list[str]] = {}
    for group, at in GROUPS.items():
        records = [
            call(
                at.replace(hour=index),
                tenant_id=7,
                user_id=7,
                key_id=7,
                cost_usd=Decimal("0.5"),
                request_body=f'{{"group": "{group}"}}',
                response_body='{"ok": true}',
                flag_reasons=["upstream_error"],
            )
            for index in range(PER_GROUP)
        ]
        write_records(engine, records)
        ids[group] = [record.id for record in records]
    with engine.begin() as connection:
        connection.execute(
            Feedback.__table__.insert(),
            [
                {"record_id": record_id, "score": 0.5, "created_at": NOW}
                for record_ids in ids.values()
                for record_id in record_ids
            ],
        )
    return ids


def remaining(engine: Engine) -> dict[str, set[str]]:
    with engine.connect() as connection:
        return {
            "records": set(connection.scalars(select(RequestRecord.id))),
            "bodies": set(connection.scalars(select(RequestBody.record_id))),
            "flags": set(connection.scalars(select(Flag.record_id))),
            "feedback": set(connection.scalars(select(Feedback.record_id))),
        }


def partitions(engine: Engine, table: str) -> list[str]:
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        return [p.name for p in monthly_partitions(connection, table)]


def test_records_and_bodies_older_than_their_cut_offs_go_and_newer_stay(engine: Engine) -> None:
    months_of_2025(engine)
    ids = log(engine)
    groups = list(GROUPS)

    def of(*names: str) -> set[str]:
        return {record_id for name in names for record_id in ids[name]}

    dry = apply_retention(engine, NOW, bodies_days=20, records_days=40, dry_run=True)
    assert remaining(engine)["records"] == of(*groups)  # a dry run deletes nothing
    report = apply_retention(engine, NOW, bodies_days=20, records_days=40, batch_size=2)

    kept = remaining(engine)
    assert kept["records"] == of("late_may", "june")
    assert kept["bodies"] == of("june")
    assert kept["flags"] == kept["feedback"] == of("late_may", "june")
    assert report.records_deleted == dry.records_deleted == 4 * PER_GROUP
    assert report.bodies_deleted == dry.bodies_deleted == 5 * PER_GROUP
    assert report.flags_deleted == report.feedback_deleted == 4 * PER_GROUP
    assert dry.flags_deleted == dry.feedback_deleted == 4 * PER_GROUP
    if engine.dialect.name == "postgresql":
        gone = [f"request_bodies_y2025m{m:02d}" for m in range(1, 5)] + [
            f"request_records_y2025m{m:02d}" for m in range(1, 5)
        ]
        assert sorted(report.partitions_dropped) == sorted(gone)
        assert sorted(dry.partitions_dropped) == sorted(gone)
        assert partitions(engine, "request_records")[:2] == [
            "request_records_y2025m05",
            "request_records_y2025m06",
        ]
    else:
        assert report.partitions_dropped == []
    # The usage rollups keep the history: dashboards and billing still see January.
    with engine.connect() as connection:
        january = connection.scalar(
            select(func.sum(usage_key_daily_table.c.requests)).where(
                usage_key_daily_table.c.day == datetime(2025, 1, 15, tzinfo=UTC)
            )
        )
    assert january == PER_GROUP
    # Nothing left to do: a second run deletes nothing.
    again = apply_retention(engine, NOW, bodies_days=20, records_days=40)
    assert (again.records_deleted, again.bodies_deleted, again.partitions_dropped) == (0, 0, [])


def test_a_bodies_only_cut_off_keeps_every_record(engine: Engine) -> None:
    months_of_2025(engine)
    ids = log(engine)
    report = apply_retention(engine, NOW, bodies_days=20, records_days=None, batch_size=2)
    kept = remaining(engine)
    assert (
        kept["records"]
        == kept["flags"]
        == kept["feedback"]
        == {record_id for group in ids.values() for record_id in group}
    )
    assert kept["bodies"] == set(ids["june"])
    assert report.records_deleted == 0 and report.bodies_deleted == 5 * PER_GROUP
    if engine.dialect.name == "postgresql":
        assert sorted(report.partitions_dropped) == [
            f"request_bodies_y2025m{m:02d}" for m in range(1, 5)
        ]
        assert "request_records_y2025m01" in partitions(engine, "request_records")


def test_unset_retention_keeps_everything(engine: Engine) -> None:
    months_of_2025(engine)
    log(engine)
    before = remaining(engine)
    report = apply_retention(engine, NOW, bodies_days=None, records_days=None)
    assert remaining(engine) == before and report.partitions_dropped == []


def test_writing_a_batch_twice_stores_each_record_once_in_its_month(engine: Engine) -> None:
    months_of_2025(engine)
    records = [
        call(at, tenant_id=9, user_id=9, key_id=9, cost_usd=Decimal(1), request_body="{}")
        for at in (GROUPS["march"], GROUPS["last_year"], GROUPS["june"])
    ]
    write_records(engine, records)
    write_records(engine, records)  # a spool replayed after a crash
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(RequestRecord)) == 3
        assert connection.scalar(select(func.count()).select_from(RequestBody)) == 3
        spent = connection.scalar(select(func.sum(usage_key_daily_table.c.requests)))
        assert spent == 3  # rolled up once
        if engine.dialect.name == "postgresql":
            assert connection.scalar(text("SELECT count(*) FROM request_records_y2025m03")) == 1
            assert connection.scalar(text("SELECT count(*) FROM request_records_default")) == 1


def test_partitions_are_made_ahead_and_a_month_the_default_holds_is_left_to_it(
    engine: Engine,
) -> None:
    if engine.dialect.name != "postgresql":
        ensure_partitions(engine, NOW)  # nothing to do on SQLite
        return
    stray = call(datetime(2031, 2, 3, tzinfo=UTC))
    write_records(engine, [stray])  # lands in the default partition
    ensure_partitions(engine, datetime(2031, 1, 15, tzinfo=UTC))
    assert [p for p in partitions(engine, "request_records") if "2031" in p] == [
        "request_records_y2031m01",
        "request_records_y2031m03",
        "request_records_y2031m04",
    ]
    assert [p for p in partitions(engine, "request_bodies") if "2031" in p] == [
        "request_bodies_y2031m01",
        "request_bodies_y2031m03",
        "request_bodies_y2031m04",
    ]
    write_records(engine, [call(datetime(2031, 3, 1, tzinfo=UTC))])
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM request_records_y2031m03")) == 1
        assert connection.scalar(text("SELECT count(*) FROM request_records_default")) == 1


def test_upgrading_a_populated_postgresql_log_keeps_every_record_and_body() -> None:
    url = create_pg_database()
    try:
        upgrade(url, "0004")
        engine = make_engine(url)
        record_id = str(uuid.uuid4())
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO request_records (id, created_at, finished_at, dialect, "
                        "endpoint, is_stream, status, prompt_tokens, completion_tokens, "
                        "cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, "
                        "is_cached, cache_saved_usd, is_flagged) VALUES (:id, :at, :at, "
                        "'openai', 'chat.completions', false, 200, 1, 1, 0, 0, 0, 5, false, 0, "
                        "false)"
                    ),
                    {"id": record_id, "at": datetime(2024, 2, 29, 23, tzinfo=UTC)},
                )
                connection.execute(
                    text(
                        "INSERT INTO request_bodies (record_id, request_body, response_body) "
                        "VALUES (:id, '{\"content\": \"zebra crossing\"}', '{}')"
                    ),
                    {"id": record_id},
                )
            upgrade(url)
            with engine.connect() as connection:
                body = connection.execute(
                    text(
                        "SELECT created_at, search_document @@ to_tsquery('simple', 'zebra') "
                        "FROM request_bodies_y2024m02 WHERE record_id = :id"
                    ),
                    {"id": record_id},
                ).one()
                assert connection.scalar(
                    text("SELECT count(*) FROM request_records_y2024m02 WHERE id = :id"),
                    {"id": record_id},
                )
            assert body == (datetime(2024, 2, 29, 23, tzinfo=UTC), True)
            names = partitions(engine, "request_records")
            assert names[0] == "request_records_y2024m02" and len(names) >= 4
        finally:
            engine.dispose()
    finally:
        drop_pg_database(url)


def test_the_background_job_keeps_partitions_ahead_and_applies_retention(engine: Engine) -> None:
    months_of_2025(engine)
    ids = log(engine)
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url, retention_bodies_days=20, retention_records_days=40)
    with httpx.Client() as client:
        BackgroundJob(engine, settings).run_once(client, NOW)
    kept = remaining(engine)
    assert kept["records"] == set(ids["late_may"] + ids["june"])
    assert kept["bodies"] == set(ids["june"])
    if engine.dialect.name == "postgresql":
        assert [p for p in partitions(engine, "request_records") if "y2025" in p][-3:] == [
            "request_records_y2025m07",
            "request_records_y2025m08",
            "request_records_y2025m09",
        ]


def test_the_retention_command_counts_in_a_dry_run_and_deletes_otherwise(engine: Engine) -> None:
    months_of_2025(engine)
    write_records(engine, [call(datetime(2020, 1, 1, tzinfo=UTC), request_body="{}")])
    env = {
        "METERGATE_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "METERGATE_RETENTION_RECORDS_DAYS": "40",
    }
    runner = CliRunner()
    dry = runner.invoke(main, ["retention", "run", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 records" in dry.output and len(remaining(engine)["records"]) == 1
    done = runner.invoke(main, ["retention", "run"], env=env)
    assert done.exit_code == 0, done.output
    assert "deleted 1 records" in done.output and remaining(engine)["records"] == set()
    unset = runner.invoke(
        main, ["retention", "run"], env={**env, "METERGATE_RETENTION_RECORDS_DAYS": None}
    )
    assert unset.exit_code == 1 and "nothing to do" in unset.output
