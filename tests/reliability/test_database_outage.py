"""PostgreSQL cut mid-traffic under gunicorn workers: calls keep being answered from the
config each process has cached, every record waits in the spool and is written once
when the database is back; a key no process has seen yet gets a clear 503."""

from __future__ import annotations

from pathlib import Path

import httpx2
from sqlalchemy import Engine

from proxy.simulator import SimulatorThread
from tests.relay import TcpRelay
from tests.reliability.conftest import Stack, record_counts, records_by_client_id
from tests.reliability.traffic import Traffic, body_for, error_shape_problems, send
from tests.support import PG_HOST, running_proxy, seed_accounts, settings_for, wait_for


def readiness(stack: Stack) -> int:
    return httpx2.get(stack.base_url + "/readyz", timeout=10).status_code


def test_database_cut_mid_traffic_loses_and_duplicates_no_record(stack: Stack) -> None:
    acct = seed_accounts(stack.engine)
    with Traffic(stack.base_url, acct.key, label="pg-outage") as traffic:
        wait_for(lambda: traffic.count(200) >= 12, timeout=60)
        stack.relay.cut()
        try:
            cut_at = len(traffic.outcomes)
            wait_for(lambda: traffic.count(since=cut_at) >= 20, timeout=60)
            wait_for(stack.spool_files, timeout=30)  # records wait on disk
            assert readiness(stack) == 503
        finally:
            stack.relay.restore()
        restored_at = len(traffic.outcomes)
        wait_for(lambda: traffic.count(200, since=restored_at) >= 12, timeout=60)

    outcomes = traffic.outcomes
    during = outcomes[cut_at:restored_at]
    assert sum(o.status == 200 for o in during) > 0, "cached config kept serving"
    for outcome in outcomes:
        assert outcome.status in (200, 503), outcome.text
        if outcome.status == 503:  # a worker that had not seen this key (or tenant) yet
            assert not error_shape_problems(outcome)
    ids = [o.request_id for o in outcomes]
    wait_for(lambda: not stack.spool_files(), timeout=60)
    wait_for(lambda: len(record_counts(stack.engine, ids)) == len(ids), timeout=30)
    assert set(record_counts(stack.engine, ids).values()) == {1}
    refused = records_by_client_id(stack.engine, [o.request_id for o in during if o.status == 503])
    assert {r.error_code for r in refused.values()} <= {"config_unavailable"}
    wait_for(lambda: readiness(stack) == 200, timeout=30)


def test_a_key_not_cached_yet_is_a_clear_503_while_the_database_is_away(
    rel_db_url: str, rel_engine: Engine, rel_simulator: SimulatorThread, tmp_path: Path
) -> None:
    known, unknown = seed_accounts(rel_engine), seed_accounts(rel_engine)
    pg_host, pg_port = PG_HOST.split(":")
    relay = TcpRelay(pg_host, int(pg_port)).start()
    via_relay = rel_db_url.replace(PG_HOST, f"127.0.0.1:{relay.port}")
    try:
        with (
            running_proxy(settings_for(via_relay, rel_simulator.base_url, tmp_path)) as proxy,
            httpx2.Client(base_url=proxy.base_url, timeout=30) as client,
        ):
            assert send(client, "openai", known.key, body_for("openai", "warm")).status == 200
            relay.cut()
            try:
                cached = send(client, "anthropic", known.key, body_for("anthropic", "still?"))
                refused = send(client, "anthropic", unknown.key, body_for("anthropic", "me?"))
            finally:
                relay.restore()
            assert cached.status == 200
            assert refused.status == 503 and refused.headers["retry-after"] == "1"
            assert not error_shape_problems(refused)
            assert "configuration" in refused.json()["error"]["message"]
            assert send(client, "openai", unknown.key, body_for("openai", "now?")).status == 200
            ids = [cached.request_id, refused.request_id]
            wait_for(lambda: len(record_counts(rel_engine, ids)) == 2, timeout=30)
    finally:
        relay.stop()
    record = records_by_client_id(rel_engine, [refused.request_id])[refused.request_id]
    assert (record.status, record.error_code) == (503, "config_unavailable")
