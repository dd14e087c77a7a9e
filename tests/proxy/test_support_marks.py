"""What the proxy records for support: replay links from the console, and upstream failures
put in the flagged queue."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator

import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Flag
from tests.proxy.recorded import only_record
from tests.support import Accounts, ProxyServer, seed_accounts

QUESTION = [{"role": "user", "content": "hello"}]


def flag_reasons(server: ProxyServer, record_id: str) -> list[str]:
    with Session(server.state.engine) as session:
        return list(session.scalars(select(Flag.reason).where(Flag.record_id == record_id)))


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ("6f1c1f5e-2a4b-4c1e-9a57-0c4d9f6b8e21", "6f1c1f5e-2a4b-4c1e-9a57-0c4d9f6b8e21"),
        ("6F1C1F5E2A4B4C1E9A570C4D9F6B8E21", "6f1c1f5e-2a4b-4c1e-9a57-0c4d9f6b8e21"),
        ("not-a-record-id", None),
        ("'; DROP TABLE request_records; --", None),
        ("", None),
    ],
)
def test_a_replay_header_links_the_record_only_when_it_is_a_record_id(
    proxy: ProxyServer, oai: openai.OpenAI, header: str, stored: str | None
) -> None:
    request_id = f"replay-{uuid.uuid4()}"
    oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id, "x-metergate-replay-of": header},
    )
    record, _ = only_record(proxy, request_id)
    assert record.replay_of == stored


@pytest.fixture()
def failing_client(edge_proxy: ProxyServer, tls: ssl.SSLContext) -> Iterator[openai.OpenAI]:
    """The SDK on the proxy that makes one upstream attempt per call (no retries)."""
    key: Accounts = seed_accounts(edge_proxy.state.engine)
    with openai.OpenAI(
        base_url=edge_proxy.base_url + "/v1",
        api_key=key.key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=tls),
    ) as client:
        yield client


@pytest.mark.parametrize(("fault", "status"), [("500", 502), ("503", 503), ("drop", 502)])
def test_an_upstream_failure_is_flagged_for_support(
    edge_proxy: ProxyServer, failing_client: openai.OpenAI, fault: str, status: int
) -> None:
    request_id = f"fault-{uuid.uuid4()}"
    with pytest.raises(openai.APIStatusError) as error:
        failing_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,  # type: ignore[arg-type]
            extra_body={"sim_fault": fault},
            extra_headers={"x-request-id": request_id},
        )
    assert error.value.status_code == status
    record, _ = only_record(edge_proxy, request_id)
    assert record.is_flagged
    assert flag_reasons(edge_proxy, record.id) == ["upstream_error"]


def test_a_stream_cut_by_the_upstream_is_flagged_for_support(
    edge_proxy: ProxyServer, failing_client: openai.OpenAI
) -> None:
    request_id = f"cut-{uuid.uuid4()}"
    with pytest.raises(openai.APIError):
        stream = failing_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,  # type: ignore[arg-type]
            stream=True,
            extra_body={"sim_fault": "truncate"},
            extra_headers={"x-request-id": request_id},
        )
        for _ in stream:
            pass
    record, _ = only_record(edge_proxy, request_id)
    assert record.status == 502
    assert flag_reasons(edge_proxy, record.id) == ["upstream_error"]


def test_refusals_of_the_gateway_itself_are_not_flagged(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    request_id = f"bad-{uuid.uuid4()}"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[],
            extra_headers={"x-request-id": request_id},
        )
    record, _ = only_record(proxy, request_id)
    assert not record.is_flagged and flag_reasons(proxy, record.id) == []
