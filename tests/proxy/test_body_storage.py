"""Each tenant's bodies are kept in full (secrets redacted), redacted, or not at all."""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from shared import accounts
from shared.db import transaction
from tests.support import Accounts, ProxyServer

SECRET = "sk-proj-abcdefghijklmnop0123456789"
QUESTION = f"what is the capital of France? my key is {SECRET}"


def _ask(proxy: ProxyServer, acct: Accounts, storage: str) -> tuple[str | None, str | None]:
    """Set the tenant's storage before its key's first call, make one call, read the bodies."""
    with transaction(proxy.state.engine) as session:
        accounts.set_tenant_body_storage(session, acct.tenant, storage)
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0)
    request_id = f"body-storage-{uuid.uuid4()}"
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"x-request-id": request_id},
    )
    record, body = proxy.record(request_id)
    assert record.status == 200 and record.prompt_tokens > 0 and record.cost_usd > 0
    if body is None:
        return None, None
    return body.request_body, body.response_body


def test_full_storage_keeps_the_conversation_with_secrets_redacted(
    proxy: ProxyServer, acct: Accounts
) -> None:
    request_body, response_body = _ask(proxy, acct, "full")
    assert request_body is not None and response_body is not None
    assert "capital of France" in request_body and SECRET not in request_body
    assert "[REDACTED:openai_key]" in request_body
    assert json.loads(response_body)["choices"][0]["message"]["content"]


def test_redacted_storage_keeps_the_shape_without_the_text(
    proxy: ProxyServer, acct: Accounts
) -> None:
    request_body, response_body = _ask(proxy, acct, "redacted")
    assert request_body is not None and response_body is not None
    request = json.loads(request_body)
    assert request["model"] == "gpt-4o-mini"
    assert request["messages"] == [{"role": "user", "content": "[REDACTED:text]"}]
    answer = json.loads(response_body)
    assert answer["choices"][0]["message"] == {
        **answer["choices"][0]["message"],
        "role": "assistant",
        "content": "[REDACTED:text]",
    }
    assert answer["usage"]["prompt_tokens"] > 0
    assert "France" not in request_body + response_body


def test_no_storage_keeps_the_metadata_only(proxy: ProxyServer, acct: Accounts) -> None:
    assert _ask(proxy, acct, "none") == (None, None)


@pytest.mark.parametrize("storage", ["", "partial", "FULL"])
def test_an_unknown_storage_is_refused(proxy: ProxyServer, acct: Accounts, storage: str) -> None:
    with (
        pytest.raises(accounts.AccountError, match="full, redacted, none"),
        transaction(proxy.state.engine) as session,
    ):
        accounts.set_tenant_body_storage(session, acct.tenant, storage)
