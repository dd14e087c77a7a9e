"""Embeddings and Anthropic token counting through the proxy, with the real SDKs.

Embeddings are priced per input token, limited, screened, cached and recorded without
their vectors; ``count_tokens`` is authenticated, rate-limited and recorded, never billed.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2
import openai
import pytest

from shared import screening
from shared.accounts import Limits
from shared.catalogue import SEED_MODELS
from shared.db import transaction
from shared.pricing import COST_QUANTUM
from tests.proxy.recorded import only_record
from tests.support import PROVIDER_ANTHROPIC_KEY, Accounts, ProxyServer, seed_accounts

if TYPE_CHECKING:
    from tests.proxy.conftest import AnthropicFactory, OpenAIFactory, SimControl

EMBEDDING_MODEL = "text-embedding-3-small"
CLAUDE = "claude-haiku-4-5"
PRICES = {entry.name: entry for entry in SEED_MODELS}
SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2


def embedding_cost(tokens: int) -> Decimal:
    return (tokens * PRICES[EMBEDDING_MODEL].input_per_mtok / Decimal(1_000_000)).quantize(
        COST_QUANTUM
    )


# -- embeddings ------------------------------------------------------------------------------


def test_embeddings_are_priced_per_input_token_and_recorded_without_vectors(
    proxy: ProxyServer, oai: openai.OpenAI, owner: tuple[int, int, int]
) -> None:
    raw = oai.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input=["first passage", f"second passage with {SECRET}"]
    )
    result = raw.parse()  # the SDK asks for base64 and decodes it
    assert [len(item.embedding) for item in result.data] == [1536, 1536]

    record, body = only_record(proxy, raw.headers["x-request-id"])
    tokens = result.usage.prompt_tokens
    assert (record.endpoint, record.status, record.model) == ("embeddings", 200, EMBEDDING_MODEL)
    assert (record.tenant_id, record.user_id, record.key_id) == owner
    assert (record.prompt_tokens, record.completion_tokens) == (tokens, 0)
    assert record.cost_usd == embedding_cost(tokens) > 0
    assert record.response_id is None
    assert body is not None and body.request_body and body.response_body
    assert json.loads(body.request_body)["input"][0] == "first passage"
    assert SECRET not in body.request_body and "[REDACTED:" in body.request_body
    summary = json.loads(body.response_body)
    assert summary == {
        "object": "list",
        "model": EMBEDDING_MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "vectors": 2,
        "dimensions": 1536,
        "encoding_format": "base64",
    }
    assert len(body.response_body) < 300  # no vectors


def test_float_vectors_and_dimensions_are_summarised(
    proxy: ProxyServer, oai: openai.OpenAI
) -> None:
    raw = oai.embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input="one", dimensions=256, encoding_format="float"
    )
    assert len(raw.parse().data[0].embedding) == 256

    _, body = only_record(proxy, raw.headers["x-request-id"])
    assert body is not None and body.response_body
    summary = json.loads(body.response_body)
    assert (summary["vectors"], summary["dimensions"], summary["encoding_format"]) == (
        1,
        256,
        "float",
    )


def test_token_array_input_is_passed_through_and_priced(
    proxy: ProxyServer, oai: openai.OpenAI, sim: SimControl
) -> None:
    raw = oai.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=[[1, 2, 3, 4]])

    assert sim.last_request()["body"]["input"] == [[1, 2, 3, 4]]
    record, _ = only_record(proxy, raw.headers["x-request-id"])
    assert record.prompt_tokens == 4 and record.cost_usd == embedding_cost(4)


def test_repeated_embeddings_are_a_deterministic_cache_hit(
    proxy: ProxyServer, new_openai: OpenAIFactory, sim: SimControl
) -> None:
    acct = seed_accounts(proxy.state.engine, limits=Limits(cache_ttl_seconds=60))
    with new_openai(acct.key) as client:
        first = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="cache")
        second = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input="cache")
        other = client.embeddings.with_raw_response.create(
            model=EMBEDDING_MODEL, input="cache", dimensions=64
        )

    heads = [r.headers["x-metergate-cache"] for r in (first, second, other)]
    assert heads == ["miss", "hit", "miss"]
    assert sum(1 for r in sim.requests() if r["path"] == "/v1/embeddings") == 2
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    hit, body = only_record(proxy, second.headers["x-request-id"])
    source, _ = only_record(proxy, first.headers["x-request-id"])
    assert hit.is_cached and hit.cost_usd == 0 and hit.cache_saved_usd == source.cost_usd
    assert body is not None and json.loads(body.response_body or "{}")["vectors"] == 1


def test_embeddings_count_against_token_limits_without_a_completion_allowance(
    proxy: ProxyServer, new_openai: OpenAIFactory
) -> None:
    # 200 tokens a minute: a chat call is charged its 1024-token completion allowance;
    # an embedding only its input.
    acct = seed_accounts(proxy.state.engine, limits=Limits(tpm=200))
    with new_openai(acct.key) as client:
        client.embeddings.create(model=EMBEDDING_MODEL, input="short text")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "short text"}]
            )
        with pytest.raises(openai.RateLimitError) as caught:
            client.embeddings.create(model=EMBEDDING_MODEL, input="word " * 400)
    assert "tokens per minute" in caught.value.message


def test_embeddings_input_is_screened_like_a_prompt(
    proxy: ProxyServer, oai: openai.OpenAI, acct: Accounts, sim: SimControl
) -> None:
    word = f"zorblax{uuid.uuid4().hex[:6]}"
    with transaction(proxy.state.engine) as session:
        screening.add_rule(session, "no-zorblax", rf"\b{word}\b", "block", acct.tenant)
    proxy.state.config.check_version()

    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model=EMBEDDING_MODEL, input=["fine", f"about {word}"])

    assert "'no-zorblax'" in caught.value.message
    assert all(r["path"] != "/v1/embeddings" for r in sim.requests())


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "input"), ({"input": 7}, "input"), ({"input": ["ok", 3]}, "input")],
)
def test_malformed_embeddings_input_is_refused(
    http: httpx2.Client, acct: Accounts, body: dict[str, Any], param: str
) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, **body},
        headers={"Authorization": f"Bearer {acct.key}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == param


# -- count_tokens ----------------------------------------------------------------------------


def test_count_tokens_is_passed_through_recorded_and_not_billed(
    proxy: ProxyServer, claude: anthropic.Anthropic, acct: Accounts, sim: SimControl
) -> None:
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]
    raw = claude.messages.with_raw_response.count_tokens(
        model=CLAUDE,
        messages=[{"role": "user", "content": "How many tokens is this?"}],
        system="Be brief.",
        tools=tools,
        extra_headers={"anthropic-beta": "token-counting-2024-11-01"},
    )
    counted = raw.parse()
    assert counted.input_tokens > 0

    upstream = sim.last_request()
    assert upstream["path"] == "/v1/messages/count_tokens"
    assert upstream["body"]["tools"] == tools and upstream["body"]["system"] == "Be brief."
    assert upstream["headers"]["anthropic-beta"] == "token-counting-2024-11-01"
    assert upstream["headers"]["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    headers = upstream["headers"]
    credentials = {headers.get("x-api-key"), headers.get("authorization")} - {None}
    assert credentials and credentials <= {
        PROVIDER_ANTHROPIC_KEY,
        f"Bearer {PROVIDER_ANTHROPIC_KEY}",
    }
    assert acct.key not in json.dumps(upstream)
    record, body = only_record(proxy, raw.headers["x-request-id"])
    assert (record.dialect, record.endpoint, record.status) == (
        "anthropic",
        "messages.count_tokens",
        200,
    )
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (0, 0, 0)
    assert raw.headers["x-metergate-cost-usd"] == "0.00000000"
    assert body is not None and json.loads(body.response_body or "{}") == {
        "input_tokens": counted.input_tokens
    }


def test_count_tokens_is_rate_limited(proxy: ProxyServer, new_anthropic: AnthropicFactory) -> None:
    acct = seed_accounts(proxy.state.engine, limits=Limits(rpm=1))
    with new_anthropic(acct.key) as client:
        messages: Any = [{"role": "user", "content": "count"}]
        client.messages.count_tokens(model=CLAUDE, messages=messages)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.count_tokens(model=CLAUDE, messages=messages)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_count_tokens_needs_a_valid_key_and_an_allowed_model(
    proxy: ProxyServer, new_anthropic: AnthropicFactory
) -> None:
    messages: Any = [{"role": "user", "content": "count"}]
    with new_anthropic("mg-wrong") as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.count_tokens(model=CLAUDE, messages=messages)
    limited = seed_accounts(proxy.state.engine, key_models=["claude-sonnet-4-5"])
    with new_anthropic(limited.key) as client, pytest.raises(anthropic.PermissionDeniedError):
        client.messages.count_tokens(model=CLAUDE, messages=messages)


def test_count_tokens_goes_through_when_the_monthly_budget_is_spent(
    proxy: ProxyServer, new_anthropic: AnthropicFactory
) -> None:
    acct = seed_accounts(proxy.state.engine, limits=Limits(monthly_usd=Decimal(0)))
    messages: Any = [{"role": "user", "content": "count"}]
    with new_anthropic(acct.key) as client:
        with pytest.raises(anthropic.RateLimitError):  # a billed call is refused
            client.messages.create(model=CLAUDE, max_tokens=20, messages=messages)
        assert client.messages.count_tokens(model=CLAUDE, messages=messages).input_tokens > 0


# -- headers ---------------------------------------------------------------------------------


def test_openai_organization_and_project_headers_never_reach_upstream(
    new_openai: OpenAIFactory, acct: Accounts, sim: SimControl
) -> None:
    with new_openai(acct.key, organization="org-client", project="proj-client") as client:
        client.responses.create(model="gpt-4o-mini", input="hi")
        client.embeddings.create(model=EMBEDDING_MODEL, input="hi")

    for request in sim.requests()[-2:]:
        headers = request["headers"]
        assert "openai-organization" not in headers and "openai-project" not in headers
        assert acct.key not in json.dumps(headers)
