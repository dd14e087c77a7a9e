"""A gunicorn worker SIGKILLed mid-call: its quota hold expires after the reservation TTL
(no quota leaks), the other worker keeps answering, the master replaces the dead one."""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx2
import orjson
import pytest

from proxy.quota import from_units
from proxy.quota_store import RedisQuotaStore
from shared.accounts import Limits
from shared.usage import Spent, month_of, month_usage
from tests.reliability.conftest import RESERVATION_TTL_SECONDS, Stack
from tests.reliability.services import sim_configure, sim_stats, worker_serving
from tests.reliability.traffic import body_for, headers_for, new_request_id, send
from tests.support import seed_accounts, wait_for

MAX_TOKENS = 400
QUOTA_TOKENS = 700  # one call's hold (prompt + max_tokens) fits; two do not


@pytest.fixture()
def slow_stream(stack: Stack) -> Iterator[None]:
    """Streams that last: 150 ms between events (the read timeout is far longer)."""
    sim_configure(stack.simulator.base_url, token_delay_ms=150)
    try:
        yield
    finally:
        sim_configure(stack.simulator.base_url, token_delay_ms=0)


def test_worker_killed_mid_call_its_hold_expires_and_others_carry_on(
    stack: Stack, slow_stream: None
) -> None:
    acct = seed_accounts(stack.engine, limits=Limits(monthly_tokens=QUOTA_TOKENS))
    bystander = seed_accounts(stack.engine)
    store = RedisQuotaStore(stack.redis.client())
    month, scope = month_of(datetime.now(UTC)), f"key:{acct.key_id}"
    request_id = new_request_id("killed")
    question = body_for("openai", "Tell me a long story.", stream=True, max_tokens=MAX_TOKENS)

    # A streamed call in flight on one worker: holding its quota reservation.
    connection = http.client.HTTPConnection("127.0.0.1", stack.proxy.port, timeout=30)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps(question),
        headers=headers_for("openai", acct.key, request_id),
    )
    response = connection.getresponse()
    assert response.status == 200
    assert response.read1(1024)  # the first event: the call is under way upstream
    client_port = connection.sock.getsockname()[1]
    workers = stack.proxy.worker_pids()
    victim = wait_for(lambda: worker_serving(workers, stack.proxy.port, client_port))
    assert store.counters(month, scope).held_tokens > MAX_TOKENS

    with httpx2.Client(base_url=stack.base_url, timeout=30) as client:

        def probe() -> int:
            body = body_for("openai", "short question", max_tokens=MAX_TOKENS)
            return send(client, "openai", acct.key, body).status

        assert probe() == 429  # the live hold leaves too little of the quota

        os.kill(victim, signal.SIGKILL)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            while response.read1(65536):
                pass
        connection.close()

        # The other worker answers at once (its replacement takes a while to boot).
        with httpx2.Client(base_url=stack.base_url, timeout=30) as fresh:
            answered = send(fresh, "openai", bystander.key, body_for("openai", "still there?"))
        assert answered.status == 200
        # The dead worker's upstream call is gone with it.
        wait_for(lambda: sim_stats(stack.simulator.base_url)["in_flight"] == 0, timeout=10)
        # The hold expires after the reservation TTL: the quota is whole again.
        assert wait_for(lambda: probe() == 200, timeout=RESERVATION_TTL_SECONDS + 15)

    counters = store.counters(month, scope)
    assert (counters.held_tokens, counters.held_usd) == (0, 0)
    # The killed call is in neither (it left no record); the others are in both.
    assert wait_for(
        lambda: (
            month_usage(stack.engine, month).keys[acct.key_id]
            == Spent(counters.tokens, from_units(counters.usd))
        )
    )
    replaced = wait_for(
        lambda: (pids := stack.proxy.worker_pids()) and len(pids) == 2 and victim not in pids,
        timeout=240,
    )
    assert replaced
