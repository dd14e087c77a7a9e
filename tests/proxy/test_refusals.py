"""Every refusal, in both dialects: status, error shape, JSON, gateway headers and a record."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import openai
import pytest

from shared import accounts
from shared.db import transaction
from shared.models import ApiKey
from tests.proxy.recorded import Recorded, only_record
from tests.support import Accounts, ProxyServer, seed_accounts

if TYPE_CHECKING:
    from tests.proxy.conftest import AnthropicFactory, OpenAIFactory

PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
OTHER_PROVIDERS_MODEL = {"openai": "claude-haiku-4-5", "anthropic": "gpt-4o-mini"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
}


@dataclass
class Keys:
    valid: Accounts
    limited: Accounts  # may use gpt-4o and claude-sonnet-4-5, not the models asked for
    revoked: Accounts
    expired: Accounts


def valid_body(dialect: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODELS[dialect],
        "messages": [{"role": "user", "content": "hello"}],
    }
    if dialect == "anthropic":
        body["max_tokens"] = 20
    return body


def changed(**fields: Any) -> Callable[[str], dict[str, Any]]:
    """A valid body with ``fields`` replaced (a value of ... removes the field)."""

    def build(dialect: str) -> dict[str, Any]:
        body = valid_body(dialect)
        for name, value in fields.items():
            if value is ...:
                body.pop(name, None)
            else:
                body[name] = value
        return body

    return build


BodyOf = Callable[[str], Any]
# (case, body for a dialect, key: a Keys field / a literal value / None, method,
#  path: None for the dialect's route, status, code)
REFUSALS: list[tuple[str, BodyOf, str | None, str, str | None, int, str]] = [
    ("malformed-json", lambda d: b'{"model": "gpt', "valid", "POST", None, 400, "invalid_json"),
    ("empty-body", lambda d: b"", "valid", "POST", None, 400, "invalid_json"),
    ("json-array", lambda d: b"[1, 2]", "valid", "POST", None, 400, "invalid_json"),
    ("missing-model", changed(model=...), "valid", "POST", None, 400, "invalid_request"),
    ("missing-messages", changed(messages=...), "valid", "POST", None, 400, "invalid_request"),
    ("empty-messages", changed(messages=[]), "valid", "POST", None, 400, "invalid_request"),
    ("model-not-string", changed(model=42), "valid", "POST", None, 400, "invalid_request"),
    ("messages-not-list", changed(messages="hi"), "valid", "POST", None, 400, "invalid_request"),
    (
        "message-without-role",
        changed(messages=[{"content": "hi"}]),
        "valid",
        "POST",
        None,
        400,
        "invalid_request",
    ),
    ("stream-not-bool", changed(stream="yes"), "valid", "POST", None, 400, "invalid_request"),
    ("max-tokens-string", changed(max_tokens="9"), "valid", "POST", None, 400, "invalid_request"),
    ("max-tokens-zero", changed(max_tokens=0), "valid", "POST", None, 400, "invalid_request"),
    ("unknown-model", changed(model="gpt-99-ultra"), "valid", "POST", None, 404, "model_not_found"),
    (
        "other-providers-model",
        lambda d: changed(model=OTHER_PROVIDERS_MODEL[d])(d),
        "valid",
        "POST",
        None,
        400,
        "wrong_route",
    ),
    ("model-not-allowed", valid_body, "limited", "POST", None, 403, "model_not_allowed"),
    ("missing-key", valid_body, None, "POST", None, 401, "missing_api_key"),
    ("invalid-key", valid_body, "mg-" + "x" * 32, "POST", None, 401, "invalid_api_key"),
    ("foreign-key", valid_body, "sk-proj-" + "y" * 40, "POST", None, 401, "invalid_api_key"),
    ("revoked-key", valid_body, "revoked", "POST", None, 401, "revoked_api_key"),
    ("expired-key", valid_body, "expired", "POST", None, 401, "expired_api_key"),
    ("models-missing-key", lambda d: None, None, "GET", "/v1/models", 401, "missing_api_key"),
    (
        "models-invalid-key",
        lambda d: None,
        "mg-" + "q" * 32,
        "GET",
        "/v1/models",
        401,
        "invalid_api_key",
    ),
    ("unknown-route", valid_body, "valid", "POST", "/v1/chat/complete", 404, "unknown_route"),
    ("unknown-route-get", lambda d: None, "valid", "GET", "/v2/models", 404, "unknown_route"),
    ("wrong-method", lambda d: None, "valid", "GET", None, 405, "method_not_allowed"),
    ("wrong-method-delete", lambda d: None, "valid", "DELETE", None, 405, "method_not_allowed"),
]
ANTHROPIC_ONLY = [
    ("missing-max-tokens", changed(max_tokens=...), "valid", "POST", None, 400, "invalid_request"),
    (
        "role-not-user-or-assistant",
        changed(messages=[{"role": "system", "content": "x"}]),
        "valid",
        "POST",
        None,
        400,
        "invalid_request",
    ),
]
CASES = [
    pytest.param(dialect, *row[1:], id=f"{dialect}-{row[0]}")
    for dialect in ("openai", "anthropic")
    for row in REFUSALS + (ANTHROPIC_ONLY if dialect == "anthropic" else [])
]


@pytest.fixture(scope="module")
def keys(proxy: ProxyServer) -> Keys:
    engine = proxy.state.engine
    revoked = seed_accounts(engine)
    expired = seed_accounts(engine)
    with transaction(engine) as session:
        accounts.revoke_key(session, str(revoked.key_id))
        key = session.get(ApiKey, expired.key_id)
        assert key is not None
        key.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        accounts.announce_change(session)
    return Keys(
        valid=seed_accounts(engine),
        limited=seed_accounts(engine, key_models=["gpt-4o", "claude-sonnet-4-5"]),
        revoked=revoked,
        expired=expired,
    )


def key_header(dialect: str, key: str) -> dict[str, str]:
    if dialect == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {key}"}


def assert_refusal(
    proxy: ProxyServer,
    response: httpx2.Response,
    dialect: str,
    status: int,
    code: str,
    sent_request_id: str,
) -> Recorded:
    """Status, dialect error shape, JSON, gateway headers, and exactly one record."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == sent_request_id
    assert response.headers["x-metergate-cost-usd"] == "0.00000000"
    assert float(response.headers["x-metergate-overhead-ms"]) >= 0
    assert response.headers["x-metergate-cache"] == "miss"
    body = response.json()
    if dialect == "openai":
        assert set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code
        assert isinstance(error["type"], str) and error["type"]
    else:
        assert body["type"] == "error" and set(body) == {"type", "error"}
        error = body["error"]
        assert set(error) == {"type", "message"}
        assert error["type"] == ANTHROPIC_ERROR_TYPES[status]
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert "Traceback" not in response.text and "<html" not in response.text.lower()

    record, stored = only_record(proxy, sent_request_id)
    assert (record.status, record.error_code, record.dialect) == (status, code, dialect)
    assert record.error_message == error["message"]
    assert record.cost_usd == 0 and record.prompt_tokens == 0
    assert stored is not None and stored.response_body is not None
    assert json.loads(stored.response_body) == body
    return record, stored


@pytest.mark.parametrize(("dialect", "body_of", "key", "method", "path", "status", "code"), CASES)
def test_refusal_is_a_json_error_in_the_callers_dialect_and_is_recorded(
    proxy: ProxyServer,
    http: httpx2.Client,
    keys: Keys,
    dialect: str,
    body_of: BodyOf,
    key: str | None,
    method: str,
    path: str | None,
    status: int,
    code: str,
) -> None:
    request_id = f"refusal-{uuid.uuid4()}"
    headers = {"x-request-id": request_id}
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    presented: Accounts | None = None
    if key is not None:
        presented = getattr(keys, key, None)
        headers.update(key_header(dialect, presented.key if presented else key))
    body = body_of(dialect)
    content = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    response = http.request(method, path or PATHS[dialect], content=content, headers=headers)

    record, stored = assert_refusal(proxy, response, dialect, status, code, request_id)
    assert stored is not None
    if status not in (404, 405) or code == "model_not_found":  # routes that exist
        assert stored.request_body == (content.decode() if content else None)
    is_authenticated = status not in (401, 404, 405) or code == "model_not_found"
    if is_authenticated and presented is not None:
        assert record.key_id == presented.key_id
    if status == 401:
        assert record.key_id is None and record.tenant_id is None


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("is_chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_refused_with_413_and_recorded(
    edge_proxy: ProxyServer, tls: ssl.SSLContext, dialect: str, is_chunked: bool
) -> None:
    valid = seed_accounts(edge_proxy.state.engine)
    body = valid_body(dialect)
    body["messages"][0]["content"] = "x" * (edge_proxy.state.settings.max_body_bytes * 2)
    raw = json.dumps(body).encode()
    content: Any = iter([raw[:1000], raw[1000:]]) if is_chunked else raw
    request_id = f"too-large-{uuid.uuid4()}"
    headers = {"x-request-id": request_id, **key_header(dialect, valid.key)}
    with httpx2.Client(base_url=edge_proxy.base_url, timeout=30, verify=tls) as client:
        response = client.post(PATHS[dialect], content=content, headers=headers)
    assert_refusal(edge_proxy, response, dialect, 413, "request_too_large", request_id)


def body_of_size(dialect: str, size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    body = valid_body(dialect)
    body["messages"][0]["content"] = ""
    padding = size - len(json.dumps(body).encode())
    body["messages"][0]["content"] = "y" * padding
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("is_chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("bytes_over_limit", "status"),
    [(0, 200), (1, 413)],
    ids=["at-limit", "one-byte-over"],
)
def test_body_size_limit_is_exact(
    edge_proxy: ProxyServer,
    tls: ssl.SSLContext,
    dialect: str,
    is_chunked: bool,
    bytes_over_limit: int,
    status: int,
) -> None:
    valid = seed_accounts(edge_proxy.state.engine)
    raw = body_of_size(dialect, edge_proxy.state.settings.max_body_bytes + bytes_over_limit)
    content: Any = iter([raw[:700], raw[700:1500], raw[1500:]]) if is_chunked else raw
    with httpx2.Client(base_url=edge_proxy.base_url, timeout=30, verify=tls) as client:
        response = client.post(
            PATHS[dialect], content=content, headers=key_header(dialect, valid.key)
        )
    assert response.status_code == status, response.text


OPENAI_ERRORS: list[tuple[str, dict[str, Any], type[openai.APIStatusError]]] = [
    ("invalid", {"model": "gpt-4o-mini"}, openai.AuthenticationError),
    ("limited", {"model": "gpt-4o-mini"}, openai.PermissionDeniedError),
    ("valid", {"model": "gpt-99-ultra"}, openai.NotFoundError),
    ("valid", {"model": "claude-haiku-4-5"}, openai.BadRequestError),
]
ANTHROPIC_ERRORS: list[tuple[str, dict[str, Any], type[anthropic.APIStatusError]]] = [
    ("invalid", {"model": "claude-haiku-4-5"}, anthropic.AuthenticationError),
    ("limited", {"model": "claude-haiku-4-5"}, anthropic.PermissionDeniedError),
    ("valid", {"model": "claude-99"}, anthropic.NotFoundError),
    ("valid", {"model": "gpt-4o-mini"}, anthropic.BadRequestError),
]


def presented_key(keys: Keys, which: str) -> str:
    return "mg-" + "z" * 32 if which == "invalid" else getattr(keys, which).key


@pytest.mark.parametrize(("which", "fields", "error"), OPENAI_ERRORS)
def test_openai_sdk_raises_its_own_error_class_for_each_refusal(
    new_openai: OpenAIFactory,
    keys: Keys,
    which: str,
    fields: dict[str, Any],
    error: type[openai.APIStatusError],
) -> None:
    with (
        new_openai(presented_key(keys, which)) as client,
        pytest.raises(error) as raised,
    ):
        client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **fields)
    assert raised.value.request_id
    assert isinstance(raised.value.code, str)


@pytest.mark.parametrize(("which", "fields", "error"), ANTHROPIC_ERRORS)
def test_anthropic_sdk_raises_its_own_error_class_for_each_refusal(
    new_anthropic: AnthropicFactory,
    keys: Keys,
    which: str,
    fields: dict[str, Any],
    error: type[anthropic.APIStatusError],
) -> None:
    with (
        new_anthropic(presented_key(keys, which)) as client,
        pytest.raises(error) as raised,
    ):
        client.messages.create(
            max_tokens=10, messages=[{"role": "user", "content": "hi"}], **fields
        )
    assert raised.value.body["type"] == "error"  # type: ignore[index]
