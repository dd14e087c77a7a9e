"""Stages: read the body within the size limit, parse it, resolve the model."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from proxy.config_cache import ConfigCache, Principal
from proxy.errors import BodyTooLarge, GatewayError, InvalidRequest, NotFound, PermissionDenied
from proxy.read_deadline import ReadDeadlines
from shared.catalogue import ModelEntry

MAX_JSON_DEPTH = 254  # what orjson encodes; it decodes up to 1024
ROUTE_FOR_PROVIDER = {"openai": "POST /v1/chat/completions", "anthropic": "POST /v1/messages"}


def read_body(request: Request, max_bytes: int, deadlines: ReadDeadlines | None = None) -> bytes:
    """The raw body; BodyTooLarge (413) past ``max_bytes``, InvalidRequest if it broke off,
    408 ``request_timeout`` when the client took longer than ``deadlines`` allow to send it."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
    if deadlines is None:
        return _read_body(request, max_bytes)
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    with deadlines.watch(sock) as is_past:
        try:
            data = _read_body(request, max_bytes)
        except InvalidRequest:
            if not is_past():
                raise
            data = b""
        if is_past():
            raise GatewayError(
                f"The request body took longer than {deadlines.seconds:g} seconds to arrive.",
                status=408,
                code="request_timeout",
            )
    return data


def _read_body(request: Request, max_bytes: int) -> bytes:
    data = b""
    try:
        # A chunked body has no Content-Length: read until it ends or passes the limit
        # (the app's MAX_CONTENT_LENGTH is one byte more, so that read never raises).
        while len(data) <= max_bytes:
            chunk = request.stream.read(max_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except RequestEntityTooLarge as exc:
        raise BodyTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.") from exc
    except (ClientDisconnected, OSError) as exc:  # OSError: gunicorn's NoMoreData, resets
        raise InvalidRequest("The request body ended before its declared length.") from exc
    if len(data) > max_bytes:
        raise BodyTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
    return data


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc.msg}.", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:  # the gateway re-encodes bodies (cache key, upstream): orjson's depth limit applies
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            f"The JSON body is nested too deeply ({exc}): at most {MAX_JSON_DEPTH} levels.",
            code="invalid_json",
        ) from exc
    return body


def resolve_model(
    config: ConfigCache, principal: Principal, name: str, provider: str
) -> ModelEntry:
    """The catalogue entry for ``name`` if this key may use it on this route."""
    model = config.model(name)
    if model is None:
        raise NotFound(
            f"The model '{name}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    if not principal.may_use(name):
        raise PermissionDenied(
            f"This key is not allowed to use the model '{name}'.",
            code="model_not_allowed",
            param="model",
        )
    if model.provider != provider:
        raise InvalidRequest(
            f"The model '{name}' is served by {model.provider}; "
            f"call it through {ROUTE_FOR_PROVIDER.get(model.provider, 'its own route')}.",
            code="wrong_route",
            param="model",
        )
    return model
