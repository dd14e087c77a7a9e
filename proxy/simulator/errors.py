"""API errors and their two wire shapes.

Handlers raise `SimError`; the dispatcher renders it for the dialect of the endpoint:

- OpenAI:    `{"error": {"message", "type", "param", "code"}}`
- Anthropic: `{"type": "error", "error": {"type", "message"}, "request_id"}`

The Anthropic error type follows the status (400 invalid_request_error, 404
not_found_error, 429 rate_limit_error, 500 api_error, 529 overloaded_error, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

import orjson


class Dialect(StrEnum):
    """Which provider an endpoint impersonates."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


_OPENAI_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}
_ANTHROPIC_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class SimError(Exception):
    """An error answer: HTTP `status` plus the fields both dialects need.

    `error_type` overrides the OpenAI `type` (default derived from the status);
    `headers` are added to the response (e.g. `retry-after`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers: Mapping[str, str] = headers or {}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> SimError:
    """A 400 `invalid_request_error`."""
    return SimError(400, message, param=param, code=code)


def missing_field(dialect: Dialect, field: str) -> SimError:
    """The error each provider gives for a missing required body field."""
    if dialect is Dialect.ANTHROPIC:
        return SimError(400, f"{field}: Field required")
    if field == "model":
        return SimError(400, "you must provide a model parameter")
    return SimError(
        400,
        f"Missing required parameter: '{field}'.",
        param=field,
        code="missing_required_parameter",
    )


def render_error(dialect: Dialect, error: SimError, request_id: str) -> bytes:
    """The JSON body for `error` in `dialect`."""
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": kind, "message": error.message},
                "request_id": request_id,
            }
        )
    default = "server_error" if error.status >= 500 else "invalid_request_error"
    kind = error.error_type or _OPENAI_TYPES.get(error.status, default)
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": error.code,
            }
        }
    )
