"""Upstream failures (simulator fault injection) become 502 / 503 / 504 in the caller's dialect.

Faults are asked for with the body field ``sim_fault``: an unknown field the proxy passes
through untouched. The proxy here makes one attempt per call and never opens a breaker,
so each fault maps straight to its answer (retries and breakers are tested elsewhere):
the ``edge_proxy`` fixture.
"""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.proxy.recorded import only_record
from tests.support import Accounts, ProxyServer, seed_accounts

DEADLINE_SECONDS = 1.0
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
QUESTION: Any = [{"role": "user", "content": "Tell me a long story about failures."}]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
ANTHROPIC_TYPES = {502: "api_error", 503: "overloaded_error", 504: "timeout_error"}

# (fault, status, code, what the upstream said that the message must carry, by dialect)
FAULTS: list[tuple[str, int, str, dict[str, str]]] = [
    (
        "500",
        502,
        "upstream_error",
        {"openai": "The server had an error", "anthropic": "Internal server error"},
    ),
    (
        "503",
        503,
        "upstream_error",
        {"openai": "overloaded or not ready", "anthropic": "Service unavailable"},
    ),
    ("529", 503, "upstream_error", {"openai": "currently overloaded", "anthropic": "Overloaded"}),
    (
        "429",
        503,
        "upstream_rate_limited",
        {"openai": "Rate limit reached", "anthropic": "exceeded your per-minute rate limit"},
    ),
    ("drop", 502, "upstream_unreachable", {}),
    ("garbage", 502, "upstream_invalid", {}),
    ("wrong_content_type", 502, "upstream_invalid", {}),
    ("truncate", 502, "upstream_unreachable", {}),
]


@pytest.fixture()
def failing(edge_proxy: ProxyServer) -> ProxyServer:
    """One attempt per call, no breaker, a one-second upstream deadline."""
    assert edge_proxy.state.settings.upstream_first_byte_timeout_seconds == DEADLINE_SECONDS
    return edge_proxy


@pytest.fixture()
def key(failing: ProxyServer) -> Accounts:
    return seed_accounts(failing.state.engine)


@pytest.fixture()
def oai(failing: ProxyServer, key: Accounts, tls: ssl.SSLContext) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=failing.base_url + "/v1",
        api_key=key.key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=tls),
    ) as client:
        yield client


@pytest.fixture()
def claude(
    failing: ProxyServer, key: Accounts, tls: ssl.SSLContext
) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=failing.base_url,
        api_key=key.key,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(verify=tls),
    ) as client:
        yield client


def call_with_fault(
    dialect: str, oai: openai.OpenAI, claude: anthropic.Anthropic, fault: str, **extra: Any
) -> httpx2.Response:
    """Make the call through the SDK; return the error answer the SDK raised on."""
    request_id = f"fault-{uuid.uuid4()}"
    body = {"sim_fault": fault, **extra}
    headers = {"x-request-id": request_id}
    if dialect == "openai":
        with pytest.raises(openai.APIStatusError) as openai_error:
            oai.chat.completions.create(
                model=OPENAI_MODEL, messages=QUESTION, extra_body=body, extra_headers=headers
            )
        return openai_error.value.response
    with pytest.raises(anthropic.APIStatusError) as anthropic_error:
        claude.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=300,
            messages=QUESTION,
            extra_body=body,
            extra_headers=headers,
        )
    return anthropic_error.value.response


def assert_failure(
    failing: ProxyServer, response: httpx2.Response, dialect: str, status: int, code: str
) -> dict[str, Any]:
    """The failure's status, dialect shape and headers, and its one record; the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("fault-")
    assert response.headers["x-metergate-cache"] == "miss"
    assert response.headers["x-metergate-cost-usd"] == "0.00000000"
    assert float(response.headers["x-metergate-overhead-ms"]) >= 0
    body = response.json()
    if dialect == "openai":
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code
    else:
        assert body["type"] == "error"
        error = body["error"]
        assert error["type"] == ANTHROPIC_TYPES[status]
    record, stored = only_record(failing, response.headers["x-request-id"])
    assert (record.status, record.error_code, record.dialect) == (status, code, dialect)
    assert record.error_message == error["message"]
    assert record.provider == dialect
    assert stored is not None and stored.request_body and stored.response_body
    assert json.loads(stored.response_body) == body
    return dict(error)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("fault", "status", "code", "said"), [pytest.param(*row, id=row[0]) for row in FAULTS]
)
def test_upstream_fault_becomes_a_gateway_error_carrying_the_upstreams_message(
    failing: ProxyServer,
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    dialect: str,
    fault: str,
    status: int,
    code: str,
    said: dict[str, str],
) -> None:
    response = call_with_fault(dialect, oai, claude, fault)
    error = assert_failure(failing, response, dialect, status, code)
    if dialect in said:
        assert said[dialect] in error["message"]
    if fault == "429":
        assert response.headers["retry-after"] == "1"


def test_hung_upstream_is_answered_with_504_within_the_deadline(
    failing: ProxyServer, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    # Both dialects, streamed and not, hung at once: each waits out the same deadline.
    def hang(dialect: str, is_stream: bool) -> tuple[httpx2.Response, float]:
        started = time.monotonic()
        response = call_with_fault(dialect, oai, claude, "hang", stream=is_stream)
        return response, time.monotonic() - started

    variants = [(dialect, is_stream) for dialect in PATHS for is_stream in (False, True)]
    with ThreadPoolExecutor(len(variants)) as pool:
        results = list(pool.map(lambda variant: hang(*variant), variants))
    for (dialect, _), (response, elapsed) in zip(variants, results, strict=True):
        assert DEADLINE_SECONDS <= elapsed < DEADLINE_SECONDS + 2.0
        assert_failure(failing, response, dialect, 504, "upstream_timeout")


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_upstream_failure_on_a_stream_request_is_a_json_error_not_a_stream(
    failing: ProxyServer,
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    dialect: str,
) -> None:
    response = call_with_fault(dialect, oai, claude, "503", stream=True)
    assert_failure(failing, response, dialect, 503, "upstream_error")


def test_truncated_openai_stream_raises_in_the_sdk_and_records_the_partial_answer(
    failing: ProxyServer, oai: openai.OpenAI
) -> None:
    full = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in oai.chat.completions.create(model=OPENAI_MODEL, messages=QUESTION, stream=True)
        if chunk.choices
    )
    request_id = f"truncated-{uuid.uuid4()}"
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=QUESTION,
            stream=True,
            extra_body={"sim_fault": "truncate"},
            extra_headers={"x-request-id": request_id},
        ):
            received.extend(choice.delta.content or "" for choice in chunk.choices)

    record, stored = only_record(failing, request_id)
    assert record.status >= 500 and record.error_code
    assert record.is_stream
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd > 0
    assert stored is not None and stored.response_body
    partial = json.loads(stored.response_body)["choices"][0]["message"]["content"]
    assert partial == "".join(received)
    assert partial and full.startswith(partial) and len(partial) < len(full)


def test_truncated_anthropic_stream_raises_in_the_sdk_and_records_the_partial_answer(
    failing: ProxyServer, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(model=ANTHROPIC_MODEL, max_tokens=300, messages=QUESTION) as whole:
        full = whole.get_final_text()
    request_id = f"truncated-{uuid.uuid4()}"
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIError),
        claude.messages.stream(
            model=ANTHROPIC_MODEL,
            max_tokens=300,
            messages=QUESTION,
            extra_body={"sim_fault": "truncate"},
            extra_headers={"x-request-id": request_id},
        ) as stream,
    ):
        for text in stream.text_stream:
            received.append(text)

    record, stored = only_record(failing, request_id)
    assert record.status >= 500 and record.error_code
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd > 0
    assert stored is not None and stored.response_body
    content = json.loads(stored.response_body)["content"]
    partial = content[0]["text"]
    assert partial == "".join(received)
    assert partial and full.startswith(partial) and len(partial) < len(full)


@pytest.mark.parametrize(
    ("dialect", "path", "body"),
    [
        ("openai", "/v1/chat/completions", {"model": OPENAI_MODEL, "messages": QUESTION}),
        (
            "anthropic",
            "/v1/messages",
            {"model": ANTHROPIC_MODEL, "max_tokens": 20, "messages": QUESTION},
        ),
    ],
)
def test_upstream_400_passes_through_with_the_upstreams_own_body(
    failing: ProxyServer,
    key: Accounts,
    tls: ssl.SSLContext,
    dialect: str,
    path: str,
    body: dict[str, Any],
) -> None:
    # The simulator refuses an unknown fault name as an invalid request of its dialect.
    rejected = {**body, "sim_fault": "no-such-fault"}
    headers = {"anthropic-version": "2023-06-01"} if dialect == "anthropic" else {}
    with httpx2.Client(timeout=30, verify=tls) as client:
        direct = client.post(SimulatorUrl.of(failing) + path, json=rejected, headers=headers)
        proxied = client.post(
            failing.base_url + path,
            json=rejected,
            headers={**headers, "Authorization": f"Bearer {key.key}"},
        )
    assert direct.status_code == proxied.status_code == 400
    blank = re.compile(rb'"?(request_id|request-id)"?:\s*"[^"]*"')
    assert blank.sub(b"", proxied.content) == blank.sub(b"", direct.content)
    assert proxied.headers["content-type"].startswith("application/json")
    assert proxied.headers["x-metergate-cache"] == "miss"

    record, stored = only_record(failing, proxied.headers["x-request-id"])
    assert record.status == 400 and record.error_code
    assert stored is not None and stored.response_body == proxied.text


class SimulatorUrl:
    @staticmethod
    def of(server: ProxyServer) -> str:
        """The upstream this proxy calls (its OpenAI base URL without ``/v1``)."""
        return server.state.settings.openai_base_url.removesuffix("/v1")
