"""Stage: authenticate the caller by its gateway key (or its identity provider's token)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from proxy.config_cache import ConfigCache, Principal
from proxy.errors import AuthenticationFailed
from proxy.jwt_auth import looks_like_token
from shared.keys import looks_like_key


def read_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

    ``headers`` has lower-cased names.
    """
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def masked(secret: str) -> str:
    """A presented key as it may appear in messages: never in full."""
    return secret[:6] + "…" if len(secret) > 10 else "…"


def authenticate(config: ConfigCache, headers: Mapping[str, str]) -> Principal:
    """The principal behind the presented key; AuthenticationFailed (401) otherwise.

    A JWT is verified against the configured issuer when there is one (proxy.jwt_auth).
    """
    secret = read_key(headers)
    if secret is None:
        raise AuthenticationFailed(
            "Missing API key: send your metergate key as 'Authorization: Bearer mg-…' "
            "or 'x-api-key: mg-…'.",
            code="missing_api_key",
        )
    if config.tokens is not None and looks_like_token(secret):
        return config.tokens.principal_for(secret)
    principal = config.principal_for(secret) if looks_like_key(secret) else None
    if principal is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {masked(secret)}.")
    if principal.is_revoked:
        raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
    expires_at = principal.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)  # SQLite hands back naive UTC values
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
    return principal
