"""The proxy's exceptions, and the one renderer that turns them into answers.

    GatewayError                 every refusal; carries status, code, message
    ├── InvalidRequest           400 malformed JSON, missing or invalid fields
    ├── ScreeningRefusal         400 too many messages, prompt too long, content blocked
    ├── BodyTooLarge             413 body over METERGATE_MAX_BODY_BYTES
    ├── AuthenticationFailed     401 missing, invalid, revoked or expired key
    ├── PermissionDenied         403 model not allowed for this key
    ├── NotFound                 404 unknown model or route
    ├── MethodNotAllowed         405
    ├── RateLimited              429 requests or tokens per minute (Retry-After)
    ├── QuotaExceeded            429 insufficient_quota: a monthly quota or cap is spent
    └── UpstreamFailure          502 / 503 / 504 the provider failed or timed out

Stages raise these; no stage builds an HTTP response. ``render`` writes the
error in the caller's dialect: OpenAI ``{"error": {message, type, param,
code}}`` or Anthropic ``{"type": "error", "error": {type, message}}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response

OPENAI = "openai"
ANTHROPIC = "anthropic"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """A refusal or failure with a status a client can act on."""

    status = 500
    code = "internal_error"
    refusal_reason: str | None = None  # recorded with the call: which kind of refusal

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        openai_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = dict(headers or {})
        self.openai_type = openai_type


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"


class ScreeningRefusal(GatewayError):
    """Refused by the screening stage; ``code`` says which check (default: content)."""

    status = 400
    code = "content_policy_violation"
    refusal_reason = "screening"


class BodyTooLarge(GatewayError):
    status = 413
    code = "request_too_large"


class AuthenticationFailed(GatewayError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class RateLimited(GatewayError):
    """A requests- or tokens-per-minute limit; ``Retry-After`` says when to try again."""

    status = 429
    code = "rate_limit_exceeded"
    refusal_reason = "rate_limit"


class QuotaExceeded(GatewayError):
    """A monthly quota or spending cap is spent: retrying before it resets cannot help."""

    status = 429
    code = "insufficient_quota"
    refusal_reason = "quota"


class UpstreamFailure(GatewayError):
    status = 502
    code = "upstream_error"


def error_body(error: GatewayError, dialect: str) -> dict[str, Any]:
    if dialect == ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": error.message}}
    kind = error.openai_type or _OPENAI_TYPES.get(error.status, "server_error")
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": error.param,
            "code": error.code,
        }
    }


def render(error: GatewayError, dialect: str, headers: dict[str, str] | None = None) -> Response:
    """The answer for ``error`` in ``dialect``, with the gateway's headers added."""
    response = Response(
        orjson.dumps(error_body(error, dialect)),
        status=error.status,
        mimetype="application/json",
    )
    for name, value in {**(headers or {}), **error.headers}.items():
        response.headers[name] = value
    return response


class UpstreamRejected(GatewayError):
    """The provider refused the request itself (a 4xx about the body); its answer goes back."""

    def __init__(self, status: int, raw_body: bytes, message: str, code: str | None) -> None:
        super().__init__(message, status=status, code=code or "upstream_rejected")
        self.raw_body = raw_body


def render_error(error: GatewayError, dialect: str) -> Response:
    """Like ``render``, but a provider's own refusal is passed through unchanged."""
    if isinstance(error, UpstreamRejected):
        return Response(error.raw_body, status=error.status, mimetype="application/json")
    return render(error, dialect)
