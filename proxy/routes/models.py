"""``GET /v1/models``: the models this key may use, in the caller's dialect.

The Anthropic SDK sends ``anthropic-version``; anything else gets OpenAI's list shape.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from flask import Request, Response

from proxy.auth import authenticate
from proxy.errors import ANTHROPIC, OPENAI, GatewayError
from proxy.pipeline import Pipeline, begin, gateway_headers

EPOCH = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())


def dialect_of(request: Request) -> str:
    return ANTHROPIC if "anthropic-version" in request.headers else OPENAI


def list_models(pipeline: Pipeline, request: Request) -> Response:
    gateway = pipeline.gateway
    ctx = begin(request, dialect_of(request), "models", gateway.trust_forwarded_for)
    try:
        headers = {name.lower(): value for name, value in request.headers.items()}
        principal = authenticate(gateway.config, headers)
    except GatewayError as error:
        return pipeline.refuse(ctx, error)
    ctx.principal = principal
    names = sorted(name for name in gateway.config.models() if principal.may_use(name))
    if ctx.dialect == ANTHROPIC:
        created = datetime.fromtimestamp(EPOCH, UTC).isoformat().replace("+00:00", "Z")
        data = [{"type": "model", "id": n, "display_name": n, "created_at": created} for n in names]
        body = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        body = {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": EPOCH, "owned_by": "metergate"}
                for n in names
            ],
        }
    response = Response(orjson.dumps(body), mimetype="application/json")
    ctx.response_body = response.get_data(as_text=True)
    response.headers.update(gateway_headers(ctx))
    pipeline.record(ctx)
    return response
