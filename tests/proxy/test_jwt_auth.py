"""OIDC/JWT bearer tokens, offline: locally generated RSA keys, a JWKS and OpenID
configuration served by a tiny local HTTP server, and the real SDKs passing the token
as their api_key through the proxy to the simulator."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import jwt
import openai
import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from proxy.config_cache import ConfigCache
from proxy.jwt_auth import (
    DISCOVERY_PATH,
    TOKEN_KEY_PREFIX,
    TokenAuth,
    build_token_auth,
    token_key_hash,
)
from proxy.simulator import SimulatorThread
from shared import accounts
from shared.accounts import Limits
from shared.db import make_engine, transaction
from shared.keys import display_prefix
from shared.models import ApiKey, User
from tests.support import (
    Accounts,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

AUDIENCE = "metergate-gateway"


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}


class IdentityProvider:
    """The issuer's public side: OpenID configuration and JWKS over HTTP; mints tokens."""

    def __init__(self) -> None:
        self.published: list[SigningKey] = [SigningKey("key-1")]
        self.jwks_fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == DISCOVERY_PATH:
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    provider.jwks_fetches += 1
                    body = {"keys": [key.jwk() for key in provider.published]}
                elif self.path == "/broken-jwks":  # what a misconfigured server may answer
                    body = "<html>not a key set</html>"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: SigningKey | None = None, **claims: Any) -> str:
        key = key or self.published[0]
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def token_proxy(
    db_url: str,
    simulator: SimulatorThread,
    idp: IdentityProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    """A proxy accepting the test issuer's tokens (JWKS found through OIDC discovery)."""
    settings = settings_for(
        db_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("token-proxy")),
        jwt_issuer=idp.issuer,
        jwt_audience=AUDIENCE,
        jwks_min_refresh_seconds=0,  # a rotated key is fetched on its first token
    )
    with running_proxy(settings) as server:
        yield server


@pytest.fixture()
def org(token_proxy: ProxyServer) -> Accounts:
    """A tenant and tier (and a key-holding user) on the token proxy's database."""
    return seed_accounts(token_proxy.state.engine)


def claims_for(org: Accounts, email: str | None = None, **more: Any) -> dict[str, Any]:
    return {
        "email": email or f"jwt-{uuid.uuid4().hex[:8]}@example.com",
        "metergate_tenant": org.tenant,
        "metergate_tier": org.tier,
        **more,
    }


def openai_client(server: ProxyServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=token, max_retries=0)


def ask(server: ProxyServer, token: str) -> Any:
    with openai_client(server, token) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {uuid.uuid4()}"}]
        )


def token_user(server: ProxyServer, email: str) -> tuple[User, list[ApiKey]]:
    with Session(server.state.engine) as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        keys = list(session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)))
        session.expunge_all()
        return user, keys


def test_openai_sdk_with_a_token_is_served_and_billed_to_the_tokens_user(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    claims = claims_for(org)
    token = idp.token(**claims)
    first = ask(token_proxy, token)
    assert first.parse().choices[0].message.content
    account_sql: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "users" in statement or "api_keys" in statement:
            account_sql.append(statement)

    event.listen(token_proxy.state.engine, "before_cursor_execute", note)
    try:
        second = ask(token_proxy, idp.token(**claims))  # a new token of the same user
    finally:
        event.remove(token_proxy.state.engine, "before_cursor_execute", note)
    assert account_sql == []  # the principal was built once, then served from memory

    user, keys = token_user(token_proxy, claims["email"])  # created once, on first use
    with Session(token_proxy.state.engine) as session:
        tenant = accounts.get_tenant(session, org.tenant)
        tier = accounts.get_tier(session, org.tier)
        assert (user.tenant_id, user.tier_id) == (tenant.id, tier.id)
    assert [(key.prefix, key.secret_hash) for key in keys] == [
        (TOKEN_KEY_PREFIX, token_key_hash(idp.issuer, user.id))
    ]
    for raw in (first, second):
        record, _ = token_proxy.record(raw.headers["x-request-id"])
        assert (record.status, record.tenant_id, record.user_id) == (200, user.tenant_id, user.id)
        assert record.key_id == keys[0].id
        assert record.cost_usd > 0


def test_anthropic_sdk_streams_with_a_token_sent_as_x_api_key(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    claims = claims_for(org)
    with anthropic.Anthropic(
        base_url=token_proxy.base_url, api_key=idp.token(**claims), max_retries=0
    ) as client:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": f"hi {uuid.uuid4()}"}],
        ) as stream:
            message = stream.get_final_message()
            request_id = stream.response.headers["x-request-id"]
    assert message.content[0].type == "text"
    user, _ = token_user(token_proxy, claims["email"])
    record, _ = token_proxy.record(request_id)
    assert (record.status, record.user_id, record.is_stream) == (200, user.id, True)


def test_existing_user_keeps_its_tier_and_the_tier_limits_hold(
    token_proxy: ProxyServer, idp: IdentityProvider
) -> None:
    org = seed_accounts(token_proxy.state.engine, limits=Limits(rpm=2))
    token = idp.token(**claims_for(org, email=org.user, metergate_tier=None))
    assert ask(token_proxy, token).http_response.status_code == 200
    assert ask(token_proxy, token).http_response.status_code == 200
    with openai_client(token_proxy, token) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "third"}]
        )
    user, keys = token_user(token_proxy, org.user)
    assert sorted(key.prefix for key in keys) == [TOKEN_KEY_PREFIX, display_prefix(org.key)]


def other_signer() -> SigningKey:
    return SigningKey("key-1")  # same kid as the issuer's key, different key


# (claims changed, signer: "issuer" / "foreign" / "unknown-kid", status, code)
REFUSALS = [
    ({}, "foreign", 401, "invalid_token"),
    ({}, "unknown-kid", 401, "invalid_token"),
    ({"exp": int(time.time()) - 3600}, "issuer", 401, "expired_token"),
    ({"aud": "someone-else"}, "issuer", 401, "invalid_token"),
    ({"iss": "https://evil.example"}, "issuer", 401, "invalid_token"),
    ({"metergate_tier": "no-such-tier"}, "issuer", 403, "unknown_tier"),
    ({"metergate_tenant": "no-such-tenant"}, "issuer", 403, "unknown_tenant"),
    ({"email": None}, "issuer", 401, "invalid_token"),
    ({"exp": None}, "issuer", 401, "invalid_token"),
]
REFUSAL_IDS = [
    "foreign-key",
    "unknown-kid",
    "expired",
    "wrong-audience",
    "wrong-issuer",
    "unknown-tier",
    "unknown-tenant",
    "no-user-claim",
    "no-exp",
]


def refused_token(
    idp: IdentityProvider, org: Accounts, changes: dict[str, Any], signer: str
) -> str:
    claims = {**claims_for(org), **changes}
    if signer == "foreign":
        return idp.token(other_signer(), **claims)
    if signer == "unknown-kid":
        return idp.token(SigningKey(f"kid-{uuid.uuid4().hex[:6]}"), **claims)
    return idp.token(**claims)


@pytest.mark.parametrize(("changes", "signer", "status", "code"), REFUSALS, ids=REFUSAL_IDS)
def test_bad_token_is_refused_in_openai_shape_and_recorded(
    token_proxy: ProxyServer,
    idp: IdentityProvider,
    org: Accounts,
    changes: dict[str, Any],
    signer: str,
    status: int,
    code: str,
) -> None:
    token = refused_token(idp, org, changes, signer)
    with openai_client(token_proxy, token) as client, pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == status
    body = err.value.response.json()
    assert body["error"]["code"] == code
    assert body["error"]["type"] == (
        "authentication_error" if status == 401 else "permission_error"
    )
    record, _ = token_proxy.record(err.value.response.headers["x-request-id"])
    assert (record.status, record.error_code, record.user_id) == (status, code, None)


@pytest.mark.parametrize(("changes", "signer", "status", "code"), REFUSALS, ids=REFUSAL_IDS)
def test_bad_token_is_refused_in_anthropic_shape(
    token_proxy: ProxyServer,
    idp: IdentityProvider,
    org: Accounts,
    changes: dict[str, Any],
    signer: str,
    status: int,
    code: str,
) -> None:
    token = refused_token(idp, org, changes, signer)
    expected = anthropic.AuthenticationError if status == 401 else anthropic.PermissionDeniedError
    with anthropic.Anthropic(base_url=token_proxy.base_url, api_key=token, max_retries=0) as client:
        with pytest.raises(expected) as err:
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "x"}]
            )
    body = err.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == (
        "authentication_error" if status == 401 else "permission_error"
    )
    record, _ = token_proxy.record(err.value.response.headers["x-request-id"])
    assert (record.status, record.error_code, record.dialect) == (status, code, "anthropic")


def test_hs256_token_signed_with_the_public_key_is_refused(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    """Algorithm confusion: the public key used as an HMAC secret must not verify."""
    now = int(time.time())
    payload = {"iss": idp.issuer, "aud": AUDIENCE, "exp": now + 300, **claims_for(org)}
    forged = jwt.encode(
        payload,
        "not-the-rsa-key-but-long-enough-0123456789",
        algorithm="HS256",
        headers={"kid": "key-1"},
    )
    with openai_client(token_proxy, forged) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


def test_user_of_another_tenant_is_refused(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    other = seed_accounts(token_proxy.state.engine)
    token = idp.token(**claims_for(org, email=other.user))
    with openai_client(token_proxy, token) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


def test_rotated_key_is_fetched_on_its_first_token_and_known_keys_are_not_refetched(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    claims = claims_for(org)
    assert ask(token_proxy, idp.token(**claims)).http_response.status_code == 200
    fetches = idp.jwks_fetches
    assert ask(token_proxy, idp.token(**claims)).http_response.status_code == 200
    assert idp.jwks_fetches == fetches  # the JWKS is cached

    rotated = SigningKey(f"key-{uuid.uuid4().hex[:6]}")
    idp.published.append(rotated)
    try:
        raw = ask(token_proxy, idp.token(rotated, **claims))
        assert raw.http_response.status_code == 200
        assert idp.jwks_fetches == fetches + 1
        assert ask(token_proxy, idp.token(**claims)).http_response.status_code == 200
    finally:
        idp.published.remove(rotated)


def test_revoking_the_token_key_shuts_the_users_token_access(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    claims = claims_for(org)
    token = idp.token(**claims)
    assert ask(token_proxy, token).http_response.status_code == 200
    _, keys = token_user(token_proxy, claims["email"])
    with transaction(token_proxy.state.engine) as session:
        accounts.revoke_key(session, str(keys[0].id))

    def refused() -> bool:
        try:
            ask(token_proxy, token)
        except openai.AuthenticationError as error:
            return error.code == "revoked_api_key"
        return False

    assert wait_for(refused, timeout=10)


def test_gateway_keys_still_work_beside_tokens(token_proxy: ProxyServer, org: Accounts) -> None:
    assert ask(token_proxy, org.key).http_response.status_code == 200
    with Session(token_proxy.state.engine) as session:
        count = session.scalar(select(func.count()).select_from(User).where(User.email == org.user))
    assert count == 1


@pytest.mark.parametrize(
    "token",
    [
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",  # alg "none", unsigned
        "eyJub3QiOiJqc29uIn0.bm9wZQ.bm9wZQ",  # not a JWT at all, shaped like one
    ],
    ids=["alg-none", "garbage"],
)
def test_unsigned_or_malformed_token_is_refused(token_proxy: ProxyServer, token: str) -> None:
    with (
        openai_client(token_proxy, token) as client,
        pytest.raises(openai.AuthenticationError) as err,
    ):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.code == "invalid_token"


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("unreachable", ["jwks_url", "issuer", "jwks_not_json"])
def test_unreachable_signing_keys_answer_503_in_the_callers_dialect(
    pg_url: str,
    simulator: SimulatorThread,
    idp: IdentityProvider,
    tmp_path: Path,
    unreachable: str,
) -> None:
    """The JWKS (or the issuer's OpenID configuration, to find it) cannot be fetched or read."""
    issuer = dead_url() if unreachable == "issuer" else idp.issuer
    settings = settings_for(
        pg_url,
        simulator.base_url,
        tmp_path,
        jwt_issuer=issuer,
        jwks_url={
            "jwks_url": dead_url() + "/jwks",
            "jwks_not_json": idp.issuer + "/broken-jwks",
        }.get(unreachable, ""),
    )
    with running_proxy(settings) as server:
        org = seed_accounts(server.state.engine)
        token = idp.token(**claims_for(org), iss=issuer)
        with anthropic.Anthropic(base_url=server.base_url, api_key=token, max_retries=0) as claude:
            with pytest.raises(anthropic.APIStatusError) as err:
                claude.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=20,
                    messages=[{"role": "user", "content": "x"}],
                )
        assert err.value.status_code == 503
        assert err.value.response.headers["retry-after"] == "5"
        assert err.value.response.json()["error"]["type"] == "overloaded_error"
        record, _ = server.record(err.value.response.headers["x-request-id"])
        assert (record.status, record.error_code) == (503, "jwks_unavailable")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"jwt_issuer": "my-idp"}, "http(s) URL"),
        ({"jwt_issuer": "https://idp.example", "jwt_algorithms": "RS256,HS256"}, "asymmetric"),
        ({"jwt_issuer": "https://idp.example", "jwt_algorithms": ""}, "asymmetric"),
    ],
)
def test_settings_that_cannot_work_stop_the_start(
    overrides: dict[str, str], problem: str, tmp_path: Path
) -> None:
    settings = settings_for("sqlite://", "http://127.0.0.1:9", tmp_path, **overrides)
    with pytest.raises(ValueError, match=re.escape(problem)):
        build_token_auth(settings, ConfigCache(make_engine("sqlite://")))


def test_a_token_trusted_from_an_earlier_call_still_expires(
    token_proxy: ProxyServer,
    idp: IdentityProvider,
    org: Accounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verified: list[str] = []
    verify = TokenAuth.verify

    def counted(self: TokenAuth, token: str) -> dict[str, Any]:
        verified.append(token)
        return verify(self, token)

    monkeypatch.setattr(TokenAuth, "verify", counted)
    now = time.time()
    token = idp.token(**claims_for(org), exp=int(now) + 120)
    assert ask(token_proxy, token).http_response.status_code == 200
    assert ask(token_proxy, token).http_response.status_code == 200
    assert verified == [token]  # trusted on the second call, not verified again
    with time_machine.travel(now + 120 + 31, tick=True):  # past exp and the 30 s leeway
        with openai_client(token_proxy, token) as client:
            with pytest.raises(openai.AuthenticationError) as err:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "late"}]
                )
    assert err.value.code == "expired_token"
    assert verified == [token, token]


def test_concurrent_first_calls_of_a_new_user_create_it_once(
    token_proxy: ProxyServer, idp: IdentityProvider, org: Accounts
) -> None:
    claims = claims_for(org)
    tokens = [idp.token(**claims, jti=str(uuid.uuid4())) for _ in range(8)]  # all different
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda t: ask(token_proxy, t).http_response.status_code, tokens))
    assert statuses == [200] * 8
    user, keys = token_user(token_proxy, claims["email"])
    assert [key.prefix for key in keys] == [TOKEN_KEY_PREFIX]
