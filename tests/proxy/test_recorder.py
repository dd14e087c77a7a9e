"""Records survive a database outage: spooled to disk, written once when it returns."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from proxy.recorder import BUSY_PAUSE_SECONDS, PAUSE_SECONDS, Pacer, RecordWriter
from proxy.simulator import SimulatorThread
from shared.db import make_engine, upgrade
from shared.models import RequestBody, RequestRecord
from shared.records import CallRecord, write_records
from tests.proxy.test_gevent_worker import run_python
from tests.relay import TcpRelay
from tests.support import ProxyServer, running_proxy, seed_accounts, settings_for, wait_for


@pytest.fixture()
def relay(pg_url: str) -> Iterator[TcpRelay]:
    upgrade(pg_url)
    relay = TcpRelay("127.0.0.1", 5432).start()
    try:
        yield relay
    finally:
        relay.stop()


def _via_relay(pg_url: str, relay: TcpRelay) -> str:
    return pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")


def _send(client: openai.OpenAI, request_id: str) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"question {request_id}"}],
        extra_headers={"x-request-id": request_id},
    )


def _count_by_client_id(proxy: ProxyServer, ids: list[str], url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(RequestRecord.client_request_id, func.count())
                .where(RequestRecord.client_request_id.in_(ids))
                .group_by(RequestRecord.client_request_id)
            ).all()
    finally:
        engine.dispose()
    return {row[0]: row[1] for row in rows}


def test_records_written_exactly_once_after_database_outage(
    pg_url: str, relay: TcpRelay, simulator: SimulatorThread, tmp_path: Path
) -> None:
    settings = settings_for(_via_relay(pg_url, relay), simulator.base_url, tmp_path)
    with running_proxy(settings) as proxy:
        acct = seed_accounts(proxy.state.engine)
        ids = [f"outage-{uuid.uuid4()}" for _ in range(60)]
        with openai.OpenAI(
            base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0
        ) as client:
            for request_id in ids[:20]:
                _send(client, request_id)
            proxy.flush()
            relay.cut()
            for request_id in ids[20:50]:
                _send(client, request_id)  # answered while the database is away
            proxy.flush()
            assert proxy.state.writer.is_db_down
            assert proxy.state.writer.spool_files(), "records should wait on disk"
            relay.restore()
            for request_id in ids[50:]:
                _send(client, request_id)
            wait_for(lambda: not proxy.state.writer.spool_files(), timeout=20)
            proxy.flush()
        counts = _count_by_client_id(proxy, ids, pg_url)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}


def _record(**overrides: object) -> CallRecord:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "created_at": now,
        "finished_at": now,
        "dialect": "openai",
        "endpoint": "chat.completions",
        "status": 200,
        "latency_ms": 1.0,
        "request_body": "{}",
        "response_body": "{}",
    }
    values.update(overrides)
    return CallRecord.model_validate(values)


def test_spool_replay_after_restart_writes_each_record_once(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    records = [_record() for _ in range(5)]
    # A batch already committed whose spool file was not yet deleted (crash in between).
    write_records(engine, records[:2])
    broken = RecordWriter(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), tmp_path)
    broken._spool(records)  # what a writer leaves when the database is down at shutdown
    writer = RecordWriter(engine, tmp_path, flush_seconds=0.01)
    writer.start()
    try:
        wait_for(lambda: not writer.spool_files())
        assert writer.flush()
    finally:
        writer.close()
    with engine.connect() as connection:
        ids = [r.id for r in records]
        count = connection.scalar(
            select(func.count()).select_from(RequestRecord).where(RequestRecord.id.in_(ids))
        )
        bodies = connection.scalar(
            select(func.count()).select_from(RequestBody).where(RequestBody.record_id.in_(ids))
        )
    engine.dispose()
    assert count == 5
    assert bodies == 5


def test_close_spools_records_when_database_is_down(tmp_path: Path) -> None:
    writer = RecordWriter(
        make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), tmp_path, flush_seconds=0.01
    )
    writer.start()
    for _ in range(3):
        writer.submit(_record())
    writer.close()
    lines = sum(len(p.read_bytes().splitlines()) for p in writer.spool_files())
    assert lines == 3


def test_record_with_oversized_and_nul_fields_is_written(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    record = _record(model="m" * 500, user_agent="ua\x00x", request_body="a\x00b")
    write_records(engine, [record])
    with engine.connect() as connection:
        model = connection.scalar(select(RequestRecord.model).where(RequestRecord.id == record.id))
    engine.dispose()
    assert model == "m" * 200


def test_every_kind_of_value_is_written_as_it_was_recorded(db_url: str) -> None:
    """Tabs, newlines, backslashes, quotes, non-ASCII text, JSON, decimals and NULLs reach
    SQL unchanged (on PostgreSQL a batch is COPY'd through staging tables)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    awkward = 'tab\there\nnew line \\N back\\slash "quoted" \u00e9\u4e2d\U0001f600 \\.'
    attempts = [{"model": "gpt-4o-mini", "status": 500, "note": awkward, "seconds": 0.25}]
    record = _record(
        error_message=awkward,
        user_agent=awkward,
        attempts=attempts,
        cost_usd=Decimal("0.00012345"),
        request_body=awkward,
        response_body=None,
        upstream_latency_ms=None,
        ttft_ms=12.5,
        output_valid=False,
    )
    try:
        write_records(engine, [record])
        with engine.connect() as connection:
            row = connection.execute(
                select(RequestRecord).where(RequestRecord.id == record.id)
            ).one()
            body = connection.execute(
                select(RequestBody).where(RequestBody.record_id == record.id)
            ).one()
    finally:
        engine.dispose()
    assert row.error_message == awkward
    assert row.user_agent == awkward
    assert row.attempts == attempts
    assert row.cost_usd == Decimal("0.00012345")
    assert row.upstream_latency_ms is None
    assert row.ttft_ms == 12.5
    assert row.output_valid is False
    assert body.request_body == awkward
    assert body.response_body is None


def test_observers_see_every_record_in_the_writer_thread_before_seen_returns(
    tmp_path: Path,
) -> None:
    """The metrics are counted off the request path, by the writer thread, and a scrape
    (``seen``) waits for what was submitted before it; the database being down changes
    nothing (records reach the spool, and the observers, all the same)."""
    writer = RecordWriter(
        make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), tmp_path, flush_seconds=5.0
    )
    shown: list[tuple[str, str]] = []
    writer.observe_with(lambda record: shown.append((record.id, threading.current_thread().name)))
    writer.start()
    try:
        records = [_record() for _ in range(3)]
        for record in records:
            writer.submit(record)
        assert writer.seen()  # long before the 5 s batch would be written
        assert shown == [(record.id, "record-writer") for record in records]
    finally:
        writer.close()
    assert len(shown) == 3  # once each: closing showed nothing twice


def test_close_shows_the_observers_records_left_in_the_queue(tmp_path: Path) -> None:
    writer = RecordWriter(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), tmp_path)
    shown: list[str] = []
    writer.observe_with(lambda record: shown.append(record.id))
    records = [_record() for _ in range(2)]
    for record in records:
        writer.submit(record)  # no writer thread: close drains them
    writer.close()
    assert shown == [record.id for record in records]


def test_a_full_batch_is_written_without_waiting_out_the_gathering(
    db_url: str, tmp_path: Path
) -> None:
    """Records gather for ``flush_seconds`` without waking the writer for each one; a
    batch that fills up is written at once (here long before the 60 s gathering ends),
    and a record queued after it waits for the next."""
    upgrade(db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine, tmp_path, batch_size=3, flush_seconds=60.0)
    writer.start()
    records = [_record() for _ in range(4)]

    def stored() -> int:
        with engine.connect() as connection:
            ids = [record.id for record in records]
            return int(
                connection.scalar(
                    select(func.count()).select_from(RequestRecord).where(RequestRecord.id.in_(ids))
                )
                or 0
            )

    try:
        for record in records[:3]:
            writer.submit(record)
        assert wait_for(stored, timeout=20.0) == 3
        writer.submit(records[3])
        assert writer.flush()  # the fourth, written now instead of a minute from now
        assert stored() == 4
    finally:
        writer.close()
        engine.dispose()


def test_a_backlog_is_written_in_larger_batches(tmp_path: Path) -> None:
    """While a write is slow, records queue; the writer then takes up to ten full
    batches at a time, so a backlog is caught up in fewer writes (each write's round
    trips, not its records, are what a busy worker makes slow)."""
    sizes: list[int] = []
    first_taken, release = threading.Event(), threading.Event()

    def slow_write(engine: Any, batch: Sequence[CallRecord]) -> None:
        sizes.append(len(batch))
        first_taken.set()
        assert release.wait(30)

    writer = RecordWriter(
        make_engine("sqlite://"), tmp_path, batch_size=10, flush_seconds=60.0, write=slow_write
    )
    for _ in range(10):  # a full batch, queued before the writer starts: taken at once
        writer.submit(_record())
    writer.start()
    try:
        assert first_taken.wait(30)  # the first batch is being written: the rest queue
        for _ in range(250):
            writer.submit(_record())
        release.set()
        assert writer.flush(timeout=30)
        assert sizes == [10, 100, 100, 50]
        assert writer.written_count == 260
    finally:
        writer.close()


def test_an_observer_that_raises_costs_no_record(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    writer = RecordWriter(engine, tmp_path, flush_seconds=0.01)

    def broken(record: CallRecord) -> None:
        raise RuntimeError("observer bug")

    shown: list[str] = []
    writer.observe_with(broken)
    writer.observe_with(lambda record: shown.append(record.id))
    writer.start()
    try:
        records = [_record() for _ in range(3)]
        for record in records:
            writer.submit(record)
        assert writer.flush()
        with engine.connect() as connection:
            count = connection.scalar(
                select(func.count())
                .select_from(RequestRecord)
                .where(RequestRecord.id.in_([record.id for record in records]))
            )
    finally:
        writer.close()
        engine.dispose()
    assert count == 3
    assert shown == [record.id for record in records]  # the next observer still saw them


def test_the_pacer_pauses_once_a_slice_is_used_at_most_so_often_a_batch() -> None:
    slept: list[float] = []
    pacer = Pacer(slice_seconds=0.0, max_pauses=3, sleep=slept.append)
    pacer.begin()
    for _ in range(5):
        pacer()
    assert slept == [PAUSE_SECONDS] * 3  # a slice of 0 is used up at every step
    pacer.begin()  # the next batch
    pacer()
    assert len(slept) == 4 and pacer.pauses == 4
    patient = Pacer(slice_seconds=60.0, sleep=slept.append)
    patient.begin()
    for _ in range(100):
        patient()
    assert patient.pauses == 0 and len(slept) == 4


def test_a_pause_that_found_the_worker_busy_ends_the_pacing_of_its_batch() -> None:
    paused: list[float] = []

    def busy(seconds: float) -> None:  # the calls let run took this long: a saturated loop
        paused.append(seconds)
        time.sleep(BUSY_PAUSE_SECONDS * 2)

    pacer = Pacer(slice_seconds=0.0, max_pauses=5, sleep=busy)
    pacer.begin()
    for _ in range(5):
        pacer()
    assert len(paused) == 1
    pacer.begin()  # the next batch is paced again
    pacer()
    assert len(paused) == 2


def test_write_records_paces_each_record_it_builds_and_copies(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    steps: list[None] = []
    write_records(engine, [_record() for _ in range(7)], pause=lambda: steps.append(None))
    engine.dispose()
    # Built, then (PostgreSQL) copied to staging as a record row and as a body row.
    assert len(steps) == (21 if db_url.startswith("postgresql") else 7)


# In a gevent process, a writer with a batch of records on SQLite (whose calls never
# yield) and a ticker greenlet; prints how often the ticker ran while the batch was
# being written, and how often the writer paused.
PACED_WRITER = """
import sys
from gevent import monkey
monkey.patch_all()
import time, gevent
from pathlib import Path
from proxy import recorder
from shared.db import make_engine, upgrade
from shared.records import write_records
from tests.proxy.test_recorder import _record
url, spool, max_pauses = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
upgrade(url)
window, ticks = [], []
def timed_write(*args, **kwargs):
    window.append(time.perf_counter())
    write_records(*args, **kwargs)
    window.append(time.perf_counter())
writer = recorder.RecordWriter(make_engine(url), spool, batch_size=5000, flush_seconds=60.0)
writer._pacer = recorder.Pacer(max_pauses=max_pauses)
writer._write = lambda engine, batch: timed_write(engine, batch, pause=writer._pacer)
def tick():
    while True:
        ticks.append(time.perf_counter())
        gevent.sleep(0.0002)
ticker = gevent.spawn(tick)
for _ in range(3000):
    writer.submit(_record())
writer.start()
assert writer.flush(timeout=60)
writer.close()
ticker.kill()
print(sum(window[0] < at < window[1] for at in ticks), writer._pacer.pauses)
"""


@pytest.mark.parametrize("max_pauses", [16, 0])
def test_a_batch_lets_other_greenlets_run_while_it_is_written(
    tmp_path: Path, max_pauses: int
) -> None:
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    output = run_python(PACED_WRITER, url, str(tmp_path / "spool"), str(max_pauses))
    ticks_while_writing, pauses = map(int, output.split())
    if max_pauses:
        assert pauses >= 1 and ticks_while_writing >= 1
    else:  # unpaced, as before: nothing else ran until the batch was written
        assert pauses == 0 and ticks_while_writing == 0


def test_a_writer_thread_outside_gevent_is_not_paced(tmp_path: Path) -> None:
    """A real thread is preempted by the interpreter; a sleep would only cost it a wait
    for the GIL behind the calls."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    writer = RecordWriter(engine, tmp_path / "spool", batch_size=5000, flush_seconds=60.0)
    for _ in range(3000):
        writer.submit(_record())
    writer.start()
    try:
        assert writer.flush(timeout=60)
        assert writer.written_count == 3000 and writer._pacer.pauses == 0
    finally:
        writer.close()
        engine.dispose()
