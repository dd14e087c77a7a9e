"""``POST /v1/feedback``: apps score their answers; a low score flags the record for support."""

from __future__ import annotations

import uuid
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.feedback import LOW_FEEDBACK
from shared.models import Feedback, Flag, RequestRecord
from tests.support import Accounts, ProxyServer, seed_accounts


def answer(client: openai.OpenAI) -> tuple[str, str]:
    """One answered call: (the client's x-request-id, the gateway's record id)."""
    request_id = f"fb-{uuid.uuid4()}"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "rate me"}],
        extra_headers={"x-request-id": request_id},
    )
    return request_id, raw.headers["x-metergate-record-id"]


def send(http: httpx2.Client, key: str | None, body: Any, **headers: str) -> httpx2.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return http.post("/v1/feedback", json=body, headers=headers)


def stored(proxy: ProxyServer, record_id: str) -> tuple[list[Feedback], list[Flag], bool]:
    with Session(proxy.state.engine) as session:
        feedback = list(session.scalars(select(Feedback).where(Feedback.record_id == record_id)))
        flags = list(session.scalars(select(Flag).where(Flag.record_id == record_id)))
        record = session.get(RequestRecord, record_id)
        assert record is not None
        return feedback, flags, record.is_flagged


def test_a_good_score_is_stored_without_a_flag(
    proxy: ProxyServer, acct: Accounts, oai: openai.OpenAI, http: httpx2.Client
) -> None:
    request_id, record_id = answer(oai)
    response = send(http, acct.key, {"request_id": request_id, "score": 0.9, "comment": "great"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["record_id"], body["flagged"]) == ("feedback", record_id, False)
    feedback, flags, is_flagged = stored(proxy, record_id)
    assert [(f.score, f.comment, f.key_id) for f in feedback] == [(0.9, "great", acct.key_id)]
    assert (flags, is_flagged) == ([], False)


def test_a_low_score_flags_the_record_once(
    proxy: ProxyServer, acct: Accounts, oai: openai.OpenAI, http: httpx2.Client
) -> None:
    _, record_id = answer(oai)  # scored by the gateway's record id this time
    for score in (0.1, 0.0):
        response = send(http, acct.key, {"request_id": record_id, "score": score})
        assert response.status_code == 200 and response.json()["flagged"] is True
    feedback, flags, is_flagged = stored(proxy, record_id)
    assert [f.score for f in feedback] == [0.1, 0.0]
    assert [(f.source, f.reason, f.status) for f in flags] == [("auto", LOW_FEEDBACK, "open")]
    assert is_flagged is True


def test_the_threshold_is_strictly_below(
    proxy: ProxyServer, acct: Accounts, oai: openai.OpenAI, http: httpx2.Client
) -> None:
    threshold = proxy.state.settings.feedback_flag_below
    request_id, record_id = answer(oai)
    response = send(http, acct.key, {"request_id": request_id, "score": threshold})
    assert response.json()["flagged"] is False
    assert stored(proxy, record_id)[1] == []


def test_another_tenants_record_is_not_found(
    proxy: ProxyServer, acct: Accounts, oai: openai.OpenAI, http: httpx2.Client
) -> None:
    request_id, record_id = answer(oai)
    stranger = seed_accounts(proxy.state.engine)
    for asked in (request_id, record_id):
        response = send(http, stranger.key, {"request_id": asked, "score": 0.0})
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("record_not_found", "request_id")
    assert stored(proxy, record_id)[:2] == ([], [])


@pytest.mark.parametrize(
    ("key", "body", "status", "code", "param"),
    [
        (None, {"request_id": "x", "score": 1}, 401, "missing_api_key", None),
        ("mg-wrong-0000000000000000000", {"request_id": "x", "score": 1}, 401,
         "invalid_api_key", None),
        ("<acct>", {"score": 1}, 400, "invalid_request", "request_id"),
        ("<acct>", {"request_id": "x", "score": 1.5}, 400, "invalid_request", "score"),
        ("<acct>", {"request_id": "x", "score": -1}, 400, "invalid_request", "score"),
        ("<acct>", {"request_id": "x", "score": "good"}, 400, "invalid_request", "score"),
        ("<acct>", {"request_id": "x", "score": 1, "stars": 5}, 400, "invalid_request", "stars"),
        ("<acct>", {"request_id": "no-such-request", "score": 1}, 404, "record_not_found",
         "request_id"),
    ],
)  # fmt: skip
def test_refusals(
    acct: Accounts,
    http: httpx2.Client,
    key: str | None,
    body: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
) -> None:
    response = send(http, acct.key if key == "<acct>" else key, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)


def test_errors_come_in_the_anthropic_shape_to_anthropic_clients(
    acct: Accounts, http: httpx2.Client
) -> None:
    response = send(
        http, acct.key, {"request_id": "x", "score": 9}, **{"anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_the_feedback_call_is_recorded_too(
    proxy: ProxyServer, acct: Accounts, oai: openai.OpenAI, http: httpx2.Client
) -> None:
    request_id, _ = answer(oai)
    response = send(
        http, acct.key, {"request_id": request_id, "score": 1}, **{"x-request-id": "fb-call"}
    )
    own = response.headers["x-metergate-record-id"]
    record, body = proxy.record(own)
    assert (record.endpoint, record.status, record.key_id) == ("feedback", 200, acct.key_id)
    assert body is not None and request_id in (body.request_body or "")
