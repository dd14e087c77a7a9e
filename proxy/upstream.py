"""Stage: call the provider, and translate its failures into the gateway's refusals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.errors import GatewayError, UpstreamFailure, UpstreamRejected
from proxy.providers.base import (
    UpstreamError,
    UpstreamHttpError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# Client headers that reach the provider. Credentials never do (the provider key is
# the gateway's), nor do OpenAI organisation/project headers.
FORWARDED_REQUEST_HEADERS = {
    "anthropic": ("anthropic-version", "anthropic-beta"),
    "openai": (),
}
# Provider headers that reach the client. The provider's x-ratelimit-* describe the
# gateway's own provider account: they go out renamed, so the gateway's limits
# (proxy.ratelimit) own the names the SDKs read.
PASSED_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
RENAMED_RESPONSE_PREFIXES = {"x-ratelimit-": "x-upstream-ratelimit-"}
PASSED_RESPONSE_HEADERS = ("retry-after", "request-id", "openai-processing-ms")
PASSED_THROUGH_STATUSES = frozenset({400, 404, 409, 413, 415, 422})


def forwarded_headers(provider: str, headers: Mapping[str, str]) -> dict[str, str]:
    names = FORWARDED_REQUEST_HEADERS.get(provider, ())
    return {name: headers[name] for name in names if name in headers}


def passed_response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    passed: dict[str, str] = {}
    for name, value in headers.items():
        if name in PASSED_RESPONSE_HEADERS or name.startswith(PASSED_RESPONSE_PREFIXES):
            for prefix, renamed in RENAMED_RESPONSE_PREFIXES.items():
                if name.startswith(prefix):
                    name = renamed + name[len(prefix) :]
            passed[name] = value
    return passed


def upstream_message(body: bytes) -> tuple[str | None, str | None]:
    """The (message, code) of a provider error body in either dialect, if readable."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    code = error.get("code") or error.get("type")
    return (
        message if isinstance(message, str) else None,
        code if isinstance(code, str) else None,
    )


def failure_for(exc: UpstreamError) -> GatewayError:
    """The refusal the client gets for an upstream failure."""
    if isinstance(exc, UpstreamTimeout):
        return UpstreamFailure(
            f"The provider did not answer in time ({exc}).", status=504, code="upstream_timeout"
        )
    if isinstance(exc, UpstreamUnreachable):
        return UpstreamFailure(f"Upstream failure: {exc}.", status=502, code="upstream_unreachable")
    if not isinstance(exc, UpstreamHttpError):
        return UpstreamFailure(f"Upstream failure: {exc}.", status=502)
    message, code = upstream_message(exc.body)
    said = f": {message}" if message else ""
    if exc.status in PASSED_THROUGH_STATUSES:
        return UpstreamRejected(exc.status, exc.body, message or "rejected by the provider", code)
    if exc.status in (401, 403):
        return UpstreamFailure(
            f"The provider refused the gateway's credentials ({exc.status}){said}",
            status=502,
            code="upstream_auth_failed",
        )
    headers = {"Retry-After": exc.headers["retry-after"]} if "retry-after" in exc.headers else {}
    if exc.status == 429:
        return UpstreamFailure(
            f"The provider is rate limiting the gateway{said}",
            status=503,
            code="upstream_rate_limited",
            headers=headers,
        )
    status = {503: 503, 529: 503, 504: 504}.get(exc.status, 502)
    return UpstreamFailure(
        f"The provider failed with status {exc.status}{said}",
        status=status,
        code="upstream_error",
        headers=headers,
    )


def invalid_answer(detail: str) -> UpstreamFailure:
    return UpstreamFailure(
        f"The provider sent an invalid answer: {detail}.", status=502, code="upstream_invalid"
    )
