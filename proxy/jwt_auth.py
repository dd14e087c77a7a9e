"""Stage helper: authenticate a caller by an OIDC/JWT bearer token of a trusted issuer.

Besides gateway keys (``mg-…``), the proxy accepts JWTs when ``METERGATE_JWT_ISSUER``
is set. A token is accepted when it is signed by a key in the issuer's JWKS
(``METERGATE_JWKS_URL``, else ``jwks_uri`` from the issuer's OpenID configuration),
with an allowed algorithm, carries that ``iss``, the configured ``aud`` (when set) and
an ``exp`` in the future. Its claims name the caller:

- tenant: ``METERGATE_JWT_TENANT_CLAIM`` (else ``METERGATE_JWT_DEFAULT_TENANT``); the
  tenant must exist, tokens never create tenants;
- user: ``METERGATE_JWT_USER_CLAIM``; the user of that name (users are named by email)
  in that tenant, created on first use with the token's tier; a user of that name in
  another tenant is refused;
- tier: ``METERGATE_JWT_TIER_CLAIM`` (must exist), else the user's own tier, else (a
  new user) ``METERGATE_JWT_DEFAULT_TIER``.

Token calls are billed to one key per user and issuer that the gateway creates with
the user: a key whose secret was never generated, so it can only be used through
tokens. Limits, quotas and records work on it as on any key; an admin can set its
limits, or revoke it to shut the user's token access.

The hot path: the JWKS is fetched once and kept (PyJWKClient; refetched after 5
minutes, or on an unknown ``kid`` at most once per ``METERGATE_JWKS_MIN_REFRESH_SECONDS``);
the principal of a (tenant, user, tier) is built with SQL once per process and kept
until the config moves (``ConfigCache.principal_of``). Per call: one signature check
(about 80 µs for RS256-2048), or none for a token verified in the last minute (apps send
the same token until it expires), which is trusted again until its ``exp``.

Refusals: a bad, expired, foreign or unverifiable token is 401; a token naming an
unknown tenant or tier, or a user of another tenant, is 403; an unreachable JWKS is 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from proxy.config_cache import ConfigCache, Principal, principal_from_rows
from proxy.errors import AuthenticationFailed, GatewayError
from shared.accounts import now_utc
from shared.models import ApiKey, Tenant, Tier, User
from shared.settings import Settings

if TYPE_CHECKING:  # PyJWT and cryptography (~9 MiB) load only when tokens are on
    import jwt

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_SECONDS = 5.0
# After a failed JWKS or discovery fetch, token calls get 503 at once for this long rather
# than each waiting on a provider that is down.
FETCH_FAILURE_HOLD_SECONDS = 5.0
VERIFIED_SECONDS = 60.0
MAX_VERIFIED_TOKENS = 10_000
JWKS_LIFESPAN_SECONDS = 300.0
MAX_TOKEN_CHARS = 16_384
MAX_NAME_CHARS = 200
TOKEN_KEY_PREFIX = "jwt"
# Keys from a JWKS are public keys: a symmetric ("HS256") or "none" algorithm never fits.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Stored in place of a key hash: never the SHA-256 hex of any secret, so no key matches.
TOKEN_KEY_HASH_MARK = "jwt:"


Identity = tuple[str, str, str | None]  # (tenant, user, tier or None) a token names


def looks_like_token(value: str) -> bool:
    """A compact JWS: three base64url parts, the header a JSON object (``eyJ``)."""
    return value.startswith("eyJ") and value.count(".") == 2 and len(value) <= MAX_TOKEN_CHARS


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What a token must be, and which claims name the caller."""

    issuer: str
    audience: str | None
    jwks_url: str | None  # None: discovered from the issuer
    algorithms: tuple[str, ...]
    tenant_claim: str
    user_claim: str
    tier_claim: str
    default_tenant: str | None
    default_tier: str | None
    leeway_seconds: int
    jwks_min_refresh_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenRules:
        algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
        return cls(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience or None,
            jwks_url=settings.jwks_url or None,
            algorithms=algorithms,
            tenant_claim=settings.jwt_tenant_claim,
            user_claim=settings.jwt_user_claim,
            tier_claim=settings.jwt_tier_claim,
            default_tenant=settings.jwt_default_tenant or None,
            default_tier=settings.jwt_default_tier or None,
            leeway_seconds=settings.jwt_leeway_seconds,
            jwks_min_refresh_seconds=settings.jwks_min_refresh_seconds,
        )


def build_token_auth(settings: Settings, config: ConfigCache) -> TokenAuth | None:
    """Token auth for this process, or None (gateway keys only) without an issuer.

    ValueError (at start-up) for settings that cannot work: an issuer that is not an
    http(s) URL with no JWKS URL to use instead, or no asymmetric algorithm allowed."""
    if not settings.jwt_issuer:
        return None
    rules = TokenRules.from_settings(settings)
    if rules.jwks_url is None and not rules.issuer.startswith(("https://", "http://")):
        raise ValueError("METERGATE_JWT_ISSUER must be an http(s) URL without METERGATE_JWKS_URL")
    if not rules.algorithms or not set(rules.algorithms) <= ASYMMETRIC_ALGORITHMS:
        raise ValueError(
            "METERGATE_JWT_ALGORITHMS must list asymmetric algorithms only, from "
            + ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
        )
    return TokenAuth(rules, config)


class TokenAuth:
    """Verifies tokens of one issuer and maps them to principals."""

    def __init__(self, rules: TokenRules, config: ConfigCache) -> None:
        self.rules = rules
        self._config = config
        self._lock = threading.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self._failed_at = -FETCH_FAILURE_HOLD_SECONDS  # monotonic time of the last failed fetch
        self._verified: dict[str, tuple[float, Identity]] = {}  # token -> (trusted until, who)

    def principal_for(self, token: str) -> Principal:
        """The principal the token names; AuthenticationFailed (401/403) otherwise."""
        identity = self._verified_identity(token)
        principal = self._config.principal_of(identity, lambda s: self._load(s, *identity))
        if principal.is_revoked:
            raise AuthenticationFailed(
                "Token access for this user has been revoked.", code="revoked_api_key"
            )
        return principal

    # -- verification -------------------------------------------------------------

    def _verified_identity(self, token: str) -> Identity:
        """Who a valid token names. An app sends the same token for many calls: a token
        verified once is trusted again until its ``exp``, for at most VERIFIED_SECONDS (so a
        key dropped from the JWKS stops working within that)."""
        now = time.time()
        seen = self._verified.get(token)
        if seen is not None and now < seen[0]:
            return seen[1]
        claims = self.verify(token)
        identity = self._identity(claims)
        until = min(float(claims["exp"]) + self.rules.leeway_seconds, now + VERIFIED_SECONDS)
        with self._lock:
            if len(self._verified) >= MAX_VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[token] = (until, identity)
        return identity

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once its signature, issuer, audience and times check out."""
        import jwt

        rules = self.rules
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            if unverified.get("iss") != rules.issuer:  # not ours: no JWKS fetch for it
                raise jwt.InvalidIssuerError("Invalid issuer")
            signing_key = self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key,
                algorithms=list(rules.algorithms),
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway_seconds,
                options={"require": ["exp", "iss"], "verify_aud": rules.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            expired = AuthenticationFailed("The bearer token has expired.", code="expired_token")
            raise expired from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid("it is not meant for this gateway (audience)") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("it is not from the configured issuer") from exc
        except jwt.PyJWTError as exc:  # signature, algorithm, key type, nbf, iat, malformed
            raise _invalid(str(exc) or type(exc).__name__) from exc
        return claims

    def _signing_key(self, token: str) -> jwt.PyJWK:
        """The issuer's key named by the token's ``kid``; 401 when the issuer has none such,
        503 when its JWKS cannot be fetched or holds no usable signing key."""
        import jwt

        if time.monotonic() - self._failed_at < FETCH_FAILURE_HOLD_SECONDS:
            raise _jwks_unavailable()
        try:
            client = self._client()
            client.get_signing_keys()  # the kept set (fetched when stale): must be usable
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:
            # ValueError: a JWKS that is not JSON (PyJWKClient lets json's error through).
            raise self._fetch_failed(exc) from exc
        try:
            return client.get_signing_key_from_jwt(token)  # refetched once for a new kid
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, ValueError) as exc:
            raise self._fetch_failed(exc) from exc
        except jwt.PyJWKClientError as exc:  # no key of the issuer has the token's kid
            raise _invalid("it is not signed by a key of the issuer") from exc

    def _fetch_failed(self, exc: Exception) -> GatewayError:
        self._failed_at = time.monotonic()
        log.warning("event=jwks_unavailable error=%s", type(exc).__name__)
        return _jwks_unavailable()

    def _client(self) -> jwt.PyJWKClient:
        import jwt

        client = self._jwks
        if client is None:
            with self._lock:
                if self._jwks is None:
                    self._jwks = jwt.PyJWKClient(
                        self.rules.jwks_url or self._discover_jwks_url(),
                        lifespan=JWKS_LIFESPAN_SECONDS,
                        timeout=FETCH_TIMEOUT_SECONDS,
                        cooldown_duration=self.rules.jwks_min_refresh_seconds,
                    )
                client = self._jwks
        return client

    def _discover_jwks_url(self) -> str:
        """``jwks_uri`` from the issuer's OpenID configuration (which must name the issuer);
        ValueError when it cannot be fetched or read."""
        url = self.rules.issuer.rstrip("/") + DISCOVERY_PATH
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
                document = json.load(response)
        except OSError as exc:  # refused, timed out, HTTP error status
            raise ValueError(f"OpenID configuration unavailable: {type(exc).__name__}") from exc
        if not isinstance(document, dict) or document.get("issuer") != self.rules.issuer:
            raise ValueError("the OpenID configuration is for another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the OpenID configuration has no http(s) jwks_uri")
        return jwks_uri

    # -- claims -> principal ------------------------------------------------------

    def _identity(self, claims: dict[str, Any]) -> Identity:
        """(tenant, user, tier or None) named by the claims."""
        rules = self.rules
        tenant = _claim(claims, rules.tenant_claim) or rules.default_tenant
        if tenant is None:
            raise _forbidden(
                f"The token names no tenant ('{rules.tenant_claim}').", "unknown_tenant"
            )
        user = _claim(claims, rules.user_claim)
        if user is None:
            raise _invalid(f"it has no '{rules.user_claim}' claim naming the user")
        return tenant, user, _claim(claims, rules.tier_claim)

    def _load(
        self, session: Session, tenant_name: str, email: str, tier_name: str | None
    ) -> Principal:
        """Build the principal with SQL (once per process until the config moves): find the
        tenant, tier and user, creating the user and its token key on first use."""
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if tenant is None:
            raise _forbidden(
                f"The token's tenant '{tenant_name}' does not exist.", "unknown_tenant"
            )
        tier = _tier(session, tier_name) if tier_name is not None else None
        user = session.scalar(select(User).where(User.email == email))
        if user is None:
            default = _tier(session, self.rules.default_tier) if self.rules.default_tier else None
            if (tier or default) is None:
                raise _forbidden("The token names no tier for its new user.", "unknown_tier")
            user = self._create(session, User(email=email, tenant=tenant, tier=tier or default))
        if user.tenant_id != tenant.id:
            raise _forbidden(
                f"The token's user belongs to another tenant than '{tenant_name}'.",
                "tenant_mismatch",
            )
        key_hash = token_key_hash(self.rules.issuer, user.id)
        key = session.scalar(select(ApiKey).where(ApiKey.secret_hash == key_hash))
        if key is None:
            key = self._create(
                session,
                ApiKey(
                    user=user,
                    name=f"token: {self.rules.issuer}"[:MAX_NAME_CHARS],
                    prefix=TOKEN_KEY_PREFIX,
                    secret_hash=key_hash,
                    environment="prod",
                ),
            )
        principal = principal_from_rows(key, user, tier or user.tier, tenant)
        log.info("event=token_principal tenant=%s user_id=%s", tenant.id, user.id)
        return principal

    def _create(self, session: Session, row: User | ApiKey) -> Any:
        """Insert a user or token key; when another process just did, use theirs.

        Not announced as a config change: nothing cached anywhere knows the new row, and a
        first call of each new user would otherwise empty every process's cache."""
        row.created_at = now_utc()
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            model = type(row)
            column = User.email if model is User else ApiKey.secret_hash
            value = row.email if isinstance(row, User) else row.secret_hash
            found = session.scalar(select(model).where(column == value))
            if found is None:
                raise
            return found
        return row


def token_key_hash(issuer: str, user_id: int) -> str:
    """The stored "hash" of a user's token key: unique per issuer and user, and never the
    SHA-256 hex of a secret (it starts with ``jwt:``), so no presented key matches it."""
    digest = hashlib.sha256(f"{issuer}\0{user_id}".encode()).hexdigest()
    return TOKEN_KEY_HASH_MARK + digest[: 64 - len(TOKEN_KEY_HASH_MARK)]


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if isinstance(value, str) and value.strip():
        return value.strip()[:MAX_NAME_CHARS]
    return None


def _tier(session: Session, name: str) -> Tier:
    tier = session.scalar(select(Tier).where(Tier.name == name))
    if tier is None:
        raise _forbidden(f"The token's tier '{name}' does not exist.", "unknown_tier")
    return tier


def _invalid(reason: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"Invalid bearer token: {reason}.", code="invalid_token")


def _forbidden(message: str, code: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code=code, status=403)


def _jwks_unavailable() -> GatewayError:
    return GatewayError(
        "The gateway cannot reach its identity provider's signing keys; please retry shortly.",
        status=503,
        code="jwks_unavailable",
        headers={"Retry-After": "5"},
    )
