"""Stored Responses API answers: ``GET`` / ``DELETE /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel`` and ``GET /v1/responses/{id}/input_items``, each
for its owner's tenant only.

These calls name no model and generate nothing, so they take the pipeline's stages
that apply, in this order:

    authenticate (per-IP limit on failures) -> rate limits (one request, no tokens)
    -> the id must belong to the caller's tenant (404 otherwise: proxy.response_owners)
    -> upstream, once (the query string passed on) -> record

No quota hold, no cost, no cache. Every path ends in exactly one record, with the
endpoint ``responses.retrieve`` / ``responses.delete`` / ``responses.cancel`` /
``responses.input_items``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

from flask import Request, Response

from proxy.auth import authenticate
from proxy.errors import OPENAI, AuthenticationFailed, GatewayError
from proxy.pipeline import Pipeline, begin, gateway_headers
from proxy.providers.base import UpstreamError
from proxy.upstream import failure_for, forwarded_headers, passed_response_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredAction:
    name: str  # recorded as the record's endpoint
    method: str  # the upstream method
    suffix: str  # after /responses/{id}


RETRIEVE = StoredAction("responses.retrieve", "GET", "")
DELETE = StoredAction("responses.delete", "DELETE", "")
CANCEL = StoredAction("responses.cancel", "POST", "/cancel")
INPUT_ITEMS = StoredAction("responses.input_items", "GET", "/input_items")


def handle_stored(
    pipeline: Pipeline, action: StoredAction, request: Request, response_id: str
) -> Response:
    """Answer ``action`` on the stored response ``response_id`` (see module docstring)."""
    gateway = pipeline.gateway
    ctx = begin(request, OPENAI, action.name, gateway.trust_forwarded_for)
    ctx.response_id = response_id[:200]
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        try:
            ctx.principal = authenticate(gateway.config, headers)
        except AuthenticationFailed:
            if gateway.rate_limits is not None:
                gateway.rate_limits.check_unauthenticated(ctx.client_ip)
            raise
        if gateway.rate_limits is not None:
            ctx.rate_grant = gateway.rate_limits.check(ctx.principal, None, 0)
        pipeline.require_owner(ctx, response_id, None)
        path = f"/responses/{quote(response_id, safe='')}{action.suffix}"
        if request.query_string:
            path += "?" + request.query_string.decode("latin-1")
        provider = gateway.providers["openai"]
        started = time.perf_counter()
        try:
            upstream = provider.request(action.method, path, forwarded_headers("openai", headers))
            raw = upstream.read()
        except UpstreamError as exc:
            raise failure_for(exc) from exc
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
    except GatewayError as error:
        return pipeline.refuse(ctx, error)
    except Exception:  # a bug: the caller still gets a JSON error, the call a record
        log.exception("event=stored_response_error request_id=%s", ctx.id)
        return pipeline.refuse(ctx, GatewayError("The gateway failed to handle this request."))
    ctx.status = upstream.status
    ctx.upstream_request_id = upstream.headers.get("x-request-id")
    ctx.response_body = raw.decode("utf-8", "replace")
    ctx.first_token_at = time.perf_counter()
    response = Response(raw, status=upstream.status, content_type=upstream.content_type or None)
    response.headers.update(passed_response_headers(upstream.headers))
    response.headers.update(gateway_headers(ctx))
    pipeline.record(ctx)
    return response
