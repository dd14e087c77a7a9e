"""The gateway's own headers are on every answer: success, stream, refusal.

Upstream failures carry them too: see test_upstream_failures (a proxy that never retries).
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from shared.pricing import format_usd
from tests.proxy.recorded import only_record
from tests.support import Accounts, ProxyServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "headers?"}]}
MESSAGE = {**CHAT, "model": "claude-haiku-4-5", "max_tokens": 30}
ANTHROPIC = {"anthropic-version": "2023-06-01"}

# (answer kind, method, path, body, extra headers, whether the key is sent, status)
ANSWERS: list[tuple[str, str, str, Any, dict[str, str], bool, int]] = [
    ("openai-answer", "POST", "/v1/chat/completions", CHAT, {}, True, 200),
    ("anthropic-answer", "POST", "/v1/messages", MESSAGE, ANTHROPIC, True, 200),
    ("openai-stream", "POST", "/v1/chat/completions", {**CHAT, "stream": True}, {}, True, 200),
    (
        "anthropic-stream",
        "POST",
        "/v1/messages",
        {**MESSAGE, "stream": True},
        ANTHROPIC,
        True,
        200,
    ),
    ("openai-models", "GET", "/v1/models", None, {}, True, 200),
    ("anthropic-models", "GET", "/v1/models", None, ANTHROPIC, True, 200),
    ("openai-refusal", "POST", "/v1/chat/completions", CHAT, {}, False, 401),
    ("anthropic-refusal", "POST", "/v1/messages", {**MESSAGE, "model": "x"}, ANTHROPIC, True, 404),
    ("unknown-route", "POST", "/v1/nowhere", CHAT, {}, True, 404),
]


@pytest.mark.parametrize("is_id_sent", [True, False], ids=["client-id", "no-client-id"])
@pytest.mark.parametrize(
    ("method", "path", "body", "extra", "is_key_sent", "status"),
    [pytest.param(*row[1:], id=row[0]) for row in ANSWERS],
)
def test_every_answer_carries_request_id_cost_overhead_and_cache_headers(
    proxy: ProxyServer,
    http: httpx2.Client,
    acct: Accounts,
    is_id_sent: bool,
    method: str,
    path: str,
    body: Any,
    extra: dict[str, str],
    is_key_sent: bool,
    status: int,
) -> None:
    headers = dict(extra)
    if is_key_sent:
        headers["Authorization"] = f"Bearer {acct.key}"
    sent_id = f"client-{uuid.uuid4()}"
    if is_id_sent:
        headers["x-request-id"] = sent_id
    content = None if body is None else json.dumps(body).encode()

    with http.stream(method, path, content=content, headers=headers) as response:
        response.read()
    assert response.status_code == status

    request_id = response.headers["x-request-id"]
    if is_id_sent:
        assert request_id == sent_id
    else:
        assert uuid.UUID(request_id).version == 4
    record, _ = only_record(proxy, request_id)
    assert response.headers["x-metergate-record-id"] == record.id
    assert response.headers["x-metergate-cache"] == "miss"
    overhead_ms = float(response.headers["x-metergate-overhead-ms"])
    assert 0 <= overhead_ms <= record.latency_ms
    cost = response.headers["x-metergate-cost-usd"]
    if response.headers["content-type"].startswith("text/event-stream"):
        assert cost == "pending"  # a stream's headers leave before its usage is known
        assert record.cost_usd > 0
    else:
        assert Decimal(cost) == record.cost_usd
        assert cost == format_usd(record.cost_usd)


def test_overlong_client_request_id_is_cut_to_what_the_record_holds(
    proxy: ProxyServer, http: httpx2.Client, acct: Accounts
) -> None:
    sent = "r" * 500
    response = http.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {acct.key}", "x-request-id": sent},
    )
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert sent.startswith(echoed) and 0 < len(echoed) <= 200
    record, _ = only_record(proxy, echoed)
    assert record.client_request_id == echoed


def test_overhead_excludes_the_time_spent_waiting_for_upstream(
    proxy: ProxyServer, http: httpx2.Client, acct: Accounts
) -> None:
    upstream_delay_ms = 400
    response = http.post(
        "/v1/chat/completions",
        json={**CHAT, "sim_fault": "slow", "sim_slow_ms": upstream_delay_ms},
        headers={"Authorization": f"Bearer {acct.key}"},
    )
    assert response.status_code == 200
    record, _ = only_record(proxy, response.headers["x-request-id"])
    assert record.upstream_latency_ms is not None
    assert record.upstream_latency_ms >= upstream_delay_ms
    assert float(response.headers["x-metergate-overhead-ms"]) < upstream_delay_ms / 2
    assert record.overhead_ms is not None and record.overhead_ms < upstream_delay_ms / 2
