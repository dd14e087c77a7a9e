"""PostgreSQL cut mid-traffic under gunicorn workers: calls keep being answered, every
record waits in the spool and is written once when the database is back."""

from __future__ import annotations

import httpx2

from tests.reliability.conftest import Stack, record_counts, records_by_client_id
from tests.reliability.traffic import Traffic, error_shape_problems
from tests.support import seed_accounts, wait_for


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
