"""Replay: what is sent, and a real round trip through the proxy with the Anthropic SDK."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from console.replay import ReplayError, ReplayRequest, replay_body, replay_record
from shared.console_users import Actor, PermissionDenied
from shared.models import RequestRecord, User
from shared.search import RecordDetail, RecordSummary, record_detail
from shared.settings import Settings
from tests.console.conftest import make_console_user
from tests.support import ProxyServer, seed_accounts, wait_for


def detail_of(endpoint: str, body: dict[str, Any] | str | None) -> RecordDetail:
    summary = RecordSummary(
        id=str(uuid.uuid4()),
        created_at=datetime.now(UTC),
        tenant=None,
        user=None,
        key=None,
        endpoint=endpoint,
        model="m",
        status=200,
        error_code=None,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=Decimal(0),
        latency_ms=1.0,
        is_cached=False,
        is_flagged=False,
        is_stream=False,
        session_id=None,
        end_user=None,
        client_request_id=None,
        replay_of=None,
    )
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    return RecordDetail(
        summary=summary,
        dialect="openai",
        provider="openai",
        upstream_model=None,
        answered_model=None,
        error_message=None,
        cache_read_tokens=0,
        cache_write_tokens=0,
        cache_saved_usd=Decimal(0),
        upstream_latency_ms=None,
        ttft_ms=None,
        overhead_ms=None,
        refusal_reason=None,
        output_valid=None,
        response_id=None,
        upstream_request_id=None,
        client_ip=None,
        user_agent=None,
        attempts=None,
        request_body=text,
        response_body=None,
        finished_at=summary.created_at,
    )


def test_a_chat_replay_body_takes_the_new_model_and_system_prompt() -> None:
    original = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "end-user-1",
        "metadata": {"user_id": "u1", "topic": "x"},
        "temperature": 0.2,
        "messages": [
            {"role": "developer", "content": "old"},
            {"role": "user", "content": "hi"},
        ],
    }
    detail = detail_of("chat.completions", original)
    body = replay_body(detail, ReplayRequest(detail.summary.id, "gpt-4o", "new"))
    assert body == {
        "model": "gpt-4o",
        "metadata": {"topic": "x"},
        "temperature": 0.2,
        "messages": [{"role": "system", "content": "new"}, {"role": "user", "content": "hi"}],
    }
    kept = replay_body(detail, ReplayRequest(detail.summary.id, "gpt-4o-mini"))
    assert kept["messages"] == original["messages"]


@pytest.mark.parametrize(
    ("endpoint", "field"), [("messages", "system"), ("responses", "instructions")]
)
def test_the_system_prompt_goes_where_the_endpoint_keeps_it(endpoint: str, field: str) -> None:
    detail = detail_of(endpoint, {"model": "m", field: [{"type": "text", "text": "old"}]})
    body = replay_body(detail, ReplayRequest(detail.summary.id, "m2", "new"))
    assert (body["model"], body[field]) == ("m2", "new")


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        ("messages.count_tokens", {"model": "m"}, "cannot be replayed"),
        ("chat.completions", None, "was not kept"),
        ("chat.completions", "not json", "not JSON"),
        ("chat.completions", "[1, 2]", "not a JSON object"),
    ],
)
def test_what_cannot_be_replayed_says_why(endpoint: str, body: Any, message: str) -> None:
    detail = detail_of(endpoint, body)
    with pytest.raises(ReplayError, match=message):
        replay_body(detail, ReplayRequest(detail.summary.id, "m"))


def test_a_viewer_may_not_replay(console_engine: Engine) -> None:
    viewer = Actor(f"viewer-{uuid.uuid4().hex[:6]}", "viewer")
    detail = detail_of("chat.completions", {"model": "m", "messages": []})
    settings = Settings(console_api_key="mg-whatever", database_url="")
    with pytest.raises(PermissionDenied):
        replay_record(console_engine, viewer, detail, ReplayRequest("x", "m"), settings)


def test_an_unreachable_proxy_is_a_replay_error(console_engine: Engine) -> None:
    support = Actor(f"support-{uuid.uuid4().hex[:6]}", "support")
    detail = detail_of("chat.completions", {"model": "m", "messages": []})
    settings = Settings(
        console_api_key="mg-x", console_proxy_url="http://127.0.0.1:9", database_url=""
    )
    with pytest.raises(ReplayError, match="Cannot reach the proxy"):
        replay_record(console_engine, support, detail, ReplayRequest("x", "m"), settings)


def test_an_anthropic_replay_round_trip_billed_to_the_console(
    console_engine: Engine, console_proxy: ProxyServer
) -> None:
    app = seed_accounts(console_engine)
    console = seed_accounts(console_engine, label=f"console-{uuid.uuid4().hex[:6]}")
    with anthropic.Anthropic(base_url=console_proxy.base_url, api_key=app.key) as claude:
        raw = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            system="Reply briefly.",
            messages=[{"role": "user", "content": "Say something."}],
            metadata={"user_id": "end-user-9"},
        )
    original_id = raw.headers["x-metergate-record-id"]
    console_proxy.record(original_id)
    detail = record_detail(console_engine, original_id)
    assert detail is not None

    support = make_console_user(console_engine, "support")
    settings = Settings(
        console_api_key=console.key, console_proxy_url=console_proxy.base_url, database_url=""
    )
    request = ReplayRequest(original_id, "claude-sonnet-4-6", "Reply in German.")
    result = replay_record(console_engine, support, detail, request, settings)
    assert (result.status, result.error) == (200, None)
    assert result.record_id is not None and result.answer_text

    replay, body = console_proxy.record(result.record_id)
    assert (replay.replay_of, replay.model) == (original_id, "claude-sonnet-4-6")
    with Session(console_engine) as session:
        console_user = session.scalars(select(User.id).where(User.email == console.user)).one()
    assert replay.user_id == console_user
    assert body is not None and body.request_body is not None
    sent = json.loads(body.request_body)
    assert sent["system"] == "Reply in German." and "user_id" not in sent.get("metadata", {})
    assert wait_for(lambda: replay_ids(console_engine, original_id)) == [result.record_id]


def replay_ids(engine: Engine, record_id: str) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(select(RequestRecord.id).where(RequestRecord.replay_of == record_id))
        )
