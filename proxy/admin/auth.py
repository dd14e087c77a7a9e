"""Who may call the admin API: whoever presents the admin token, and nobody else.

``Authorization: Bearer <METERGATE_ADMIN_TOKEN>``, compared in constant time. A
gateway key gets 403 (it is a credential, just not this one); anything else 401, and
repeated failures from one IP meet the same per-IP limit as bad gateway keys (429).
With no admin token configured the admin API refuses every call.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from flask import Request

from proxy.auth import read_key
from proxy.config_cache import ConfigCache
from proxy.errors import OPENAI, AuthenticationFailed, PermissionDenied
from proxy.pipeline import begin
from proxy.ratelimit import RateLimits
from shared.keys import looks_like_key

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="metergate-admin"'}


def check_admin(
    admin_token: str,
    request: Request,
    config: ConfigCache,
    rate_limits: RateLimits | None,
    *,
    trust_forwarded_for: bool,
) -> None:
    """Return if the request carries the admin token; raise the refusal otherwise.

    Raises AuthenticationFailed (401), PermissionDenied (403) for a gateway key, or
    RateLimited (429) past the per-IP limit on failed attempts.
    """
    headers: Mapping[str, str] = {name.lower(): value for name, value in request.headers.items()}
    presented = read_key(headers)
    if presented is not None:
        if admin_token and _same(presented, admin_token):
            return
        if looks_like_key(presented) and config.principal_for(presented) is not None:
            raise PermissionDenied(
                "This is a gateway key; the admin API needs the admin token.",
                code="admin_token_required",
            )
    if rate_limits is not None:  # 429 instead, past the per-IP limit on failures
        client_ip = begin(request, OPENAI, "admin", trust_forwarded_for).client_ip
        rate_limits.check_unauthenticated(client_ip)
    if presented is None:
        raise AuthenticationFailed(
            "Missing admin token: send it as 'Authorization: Bearer <token>'.",
            code="missing_admin_token",
            headers=CHALLENGE,
        )
    if not admin_token:
        raise AuthenticationFailed(
            "The admin API is off: set METERGATE_ADMIN_TOKEN to turn it on.",
            code="admin_api_disabled",
            headers=CHALLENGE,
        )
    raise AuthenticationFailed(
        "Incorrect admin token.", code="invalid_admin_token", headers=CHALLENGE
    )


def _same(presented: str, expected: str) -> bool:
    """Constant-time comparison (for any length and any characters)."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )
