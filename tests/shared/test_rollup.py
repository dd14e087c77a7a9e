"""The usage rollups: kept up to date by write_records, equal to a rebuild, on both databases."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from shared.db import make_engine, upgrade
from shared.models import (
    LATENCY_EDGES_MS,
    latency_column,
    usage_hourly_table,
)
from shared.records import write_records
from shared.rollup import (
    ROLLUPS,
    as_utc,
    error_code_of,
    latency_bucket,
    month_start_of,
    rebuild,
)
from tests.shared.usage_records import call, fresh_owner, varied_records


def fresh_start() -> datetime:
    """An hour in a future month no other test writes to (anonymous rows have tenant 0,
    and a snapshot reads from the start of the month): one of ~80,000 months."""
    month = random.randrange(0, 80_000)
    first = datetime(2040 + month // 12, 1 + month % 12, 1, tzinfo=UTC)
    return first + timedelta(hours=random.randrange(0, 24 * 20))


def snapshot(engine: Engine, owner: int, start: datetime) -> dict[str, dict[tuple[Any, ...], Any]]:
    """Every rollup's rows of ``owner`` (and anonymous ones) around ``start``, normalised."""
    result = {}
    with engine.connect() as connection:
        for rollup in ROLLUPS:
            table, time_column = rollup.table, rollup.grain
            query = select(table).where(
                table.c.tenant_id.in_([owner, 0]),
                table.c[time_column] >= month_start_of(start - timedelta(days=1)),
                table.c[time_column] < start + timedelta(days=5),
            )
            rows = {}
            for row in connection.execute(query).mappings():
                values = {name: _normal(value) for name, value in row.items()}
                values[time_column] = as_utc(row[time_column])
                rows[tuple(values[name] for name in rollup.key_columns)] = values
            result[table.name] = rows
    return result


def _normal(value: Any) -> Any:
    # SQLite sums money as floats: compare to the ledger's 1e-8 USD.
    return value.quantize(Decimal("1e-8")) if isinstance(value, Decimal) else value


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (0.0, 0),
        (LATENCY_EDGES_MS[0] / 2, 0),
        (LATENCY_EDGES_MS[0], 1),
        (LATENCY_EDGES_MS[10], 11),
        (LATENCY_EDGES_MS[10] - 1e-9, 10),
        (LATENCY_EDGES_MS[-1], len(LATENCY_EDGES_MS)),
        (1e12, len(LATENCY_EDGES_MS)),
    ],
)
def test_latency_bucket_is_half_open_on_the_edges(value: float, bucket: int) -> None:
    assert latency_bucket(value) == bucket


@pytest.mark.parametrize(
    ("code", "status", "rolled_up"),
    [
        (None, 200, ""),
        ("", 200, ""),
        (None, 504, "http_504"),
        ("upstream_error", 502, "upstream_error"),
    ],
)
def test_error_code_of_names_every_error(code: str | None, status: int, rolled_up: str) -> None:
    assert error_code_of(code, status) == rolled_up


def test_rollup_equals_a_rebuild_after_writes_and_duplicate_replays(engine: Engine) -> None:
    owner, start = fresh_owner(), fresh_start()
    records = varied_records(owner, start, 400)
    write_records(engine, records[:150])
    write_records(engine, records[100:300])  # overlaps: a replayed spool file
    write_records(engine, records[250:])
    write_records(engine, records)  # the whole batch again: inserts nothing
    incremental = snapshot(engine, owner, start)

    rebuild(engine, since=start - timedelta(days=1))

    assert snapshot(engine, owner, start) == incremental
    hourly = incremental["usage_hourly"].values()
    assert sum(row["requests"] for row in hourly) == len(records)
    assert sum(row["cache_hits"] for row in hourly) == sum(r.is_cached for r in records)
    assert sum(row["cost_usd"] for row in hourly) == sum(r.cost_usd for r in records)
    for table in (
        "usage_daily",
        "usage_key_daily",
        "usage_end_user_daily",
        "usage_end_user_monthly",
    ):
        assert sum(row["requests"] for row in incremental[table].values()) == len(records)
    daily = incremental["usage_daily"].values()
    assert sum(row["errors"] for row in daily) == sum(r.status >= 400 for r in records)


def test_a_replayed_batch_adds_nothing(engine: Engine) -> None:
    owner, start = fresh_owner(), fresh_start()
    records = varied_records(owner, start, 60, seed=3)
    write_records(engine, records)
    before = snapshot(engine, owner, start)
    write_records(engine, list(reversed(records)))
    assert snapshot(engine, owner, start) == before


def test_one_hour_row_sums_a_hit_a_prompt_cached_call_and_an_error(engine: Engine) -> None:
    owner, start = fresh_owner(), fresh_start()
    mine: dict[str, Any] = {
        "tenant_id": owner,
        "user_id": owner,
        "key_id": owner,
        "model": "gpt-4o",
        "provider": "openai",
    }
    write_records(
        engine,
        [
            call(
                start,
                prompt_tokens=100,
                completion_tokens=20,
                cost_usd=Decimal("0.001"),
                cache_read_tokens=80,
                cache_saved_usd=Decimal("0.0002"),
                latency_ms=120.0,
                upstream_latency_ms=100.0,
                overhead_ms=2.0,
                ttft_ms=None,
                **mine,
            ),
            call(
                start + timedelta(minutes=59),
                prompt_tokens=100,
                completion_tokens=20,
                is_cached=True,
                cache_saved_usd=Decimal("0.001"),
                latency_ms=3.0,
                **mine,
            ),
            call(start + timedelta(minutes=60), status=502, error_code="upstream_error", **mine),
        ],
    )
    rows = snapshot(engine, owner, start)["usage_hourly"]
    ok = rows[(start, owner, owner, owner, "gpt-4o", "openai", "", "")]
    assert {name: ok[name] for name in ("requests", "errors", "cache_hits")} == {
        "requests": 2,
        "errors": 0,
        "cache_hits": 1,
    }
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["cache_read_tokens"]) == (100, 20, 80)
    assert ok["cache_hit_tokens"] == 120
    assert ok["cost_usd"] == Decimal("0.001")
    assert ok["response_cache_saved_usd"] == Decimal("0.001")
    assert ok["prompt_cache_saved_usd"] == Decimal("0.0002")
    assert ok[latency_column("total", latency_bucket(120.0))] == 1
    assert ok[latency_column("total", latency_bucket(3.0))] == 1
    assert ok[latency_column("upstream", latency_bucket(100.0))] == 1
    assert not any(ok[latency_column("ttft", bucket)] for bucket in range(44))
    failed = rows[
        (start + timedelta(hours=1), owner, owner, owner, "gpt-4o", "openai", "upstream_error", "")
    ]
    assert (failed["requests"], failed["errors"]) == (1, 1)


def test_rebuild_since_an_hour_leaves_earlier_hours_alone(engine: Engine) -> None:
    owner, start = fresh_owner(), fresh_start()
    write_records(engine, varied_records(owner, start, 80, seed=11))
    correct = snapshot(engine, owner, start)
    earlier = usage_hourly_table.c.hour < start + timedelta(hours=10)
    with engine.begin() as connection:
        connection.execute(
            update(usage_hourly_table)
            .where(usage_hourly_table.c.tenant_id == owner, earlier)
            .values(requests=usage_hourly_table.c.requests + 1000)
        )
    rebuild(engine, since=start + timedelta(hours=10, minutes=30))
    partly = snapshot(engine, owner, start)["usage_hourly"]
    assert all(
        (row["requests"] >= 1000) == (row["hour"] < start + timedelta(hours=10))
        for row in partly.values()
        if row["tenant_id"] == owner
    )
    rebuild(engine, since=start - timedelta(days=1))
    assert snapshot(engine, owner, start) == correct


def test_upgrade_fills_an_empty_rollup_from_the_records(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'backfill.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        owner, start = fresh_owner(), fresh_start()
        write_records(engine, varied_records(owner, start, 50, seed=5))
        written = snapshot(engine, owner, start)
        with engine.begin() as connection:
            for rollup in ROLLUPS:
                connection.execute(rollup.table.delete())
        upgrade(url)
        assert snapshot(engine, owner, start) == written
    finally:
        engine.dispose()


def test_concurrent_writers_with_overlapping_batches_count_each_record_once(
    pg_url: str,
) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url, pool_size=4)
    try:
        owner, start = fresh_owner(), fresh_start()
        records = varied_records(owner, start, 240, seed=13)
        batches = [records[i : i + 80] for i in range(0, 240, 40)]  # each record in two
        gate = threading.Barrier(len(batches))
        errors: list[BaseException] = []

        def write(batch: list[Any]) -> None:
            try:
                gate.wait()
                write_records(engine, batch)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        written = snapshot(engine, owner, start)
        assert sum(r["requests"] for r in written["usage_hourly"].values()) == len(records)
        rebuild(engine, since=start - timedelta(days=1))
        assert snapshot(engine, owner, start) == written
    finally:
        engine.dispose()
