"""``POST /v1/feedback``: an app scores one of its answers; a low score flags it for support.

``{"request_id": "...", "score": 0.0-1.0, "comment": "..."}`` with the app's own gateway
key. ``request_id`` is the ``x-request-id`` (or ``x-metergate-record-id``) the answer
carried; the record must belong to the key's tenant (404 otherwise). The score is
stored before the answer goes back (200), so an acknowledged score is never lost; if
the database cannot take it the app gets a 503 and sends it again. Errors come in the
caller's dialect (Anthropic's when it sends ``anthropic-version``), and the call is
recorded like any other.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Request, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from proxy.auth import authenticate
from proxy.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound
from proxy.pipeline import Pipeline, begin, gateway_headers
from proxy.routes.models import dialect_of
from proxy.validate import read_body
from shared.feedback import find_record_id, save_feedback

blueprint = Blueprint("feedback", __name__)
ENDPOINT = "feedback"
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid", strict=False)

    request_id: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    comment: str | None = Field(None, max_length=10_000, pattern=NO_NUL)


@blueprint.post("/v1/feedback")
def feedback() -> Response:
    state = current_app.extensions["metergate"]
    return record_feedback(
        state.pipeline, state.engine, request, flag_below=state.settings.feedback_flag_below
    )


def record_feedback(
    pipeline: Pipeline, engine: Engine, request: Request, *, flag_below: float
) -> Response:
    gateway = pipeline.gateway
    ctx = begin(request, dialect_of(request), ENDPOINT, gateway.trust_forwarded_for)
    try:
        ctx.raw_body = read_body(request, gateway.max_body_bytes, gateway.read_deadlines)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            ctx.principal = principal = authenticate(gateway.config, headers)
        except AuthenticationFailed:
            if gateway.rate_limits is not None:  # 429 instead, past the per-IP limit
                gateway.rate_limits.check_unauthenticated(ctx.client_ip)
            raise
        asked = _parse(ctx.raw_body)
        record_id = find_record_id(engine, principal.tenant_id, asked.request_id)
        if record_id is None and gateway.writer.flush(timeout=5.0):
            # The call may have ended a moment ago in this process, its record still queued.
            record_id = find_record_id(engine, principal.tenant_id, asked.request_id)
        if record_id is None:
            raise NotFound(
                f"No request {asked.request_id!r} for this key's tenant (a record can be "
                "scored once it is written, within a second or so of the answer).",
                code="record_not_found",
                param="request_id",
            )
        saved = save_feedback(
            engine,
            record_id,
            key_id=principal.key_id,
            score=asked.score,
            comment=asked.comment,
            flag_below=flag_below,
        )
    except GatewayError as error:
        return pipeline.refuse(ctx, error)
    except SQLAlchemyError:
        return pipeline.refuse(
            ctx,
            GatewayError(
                "The feedback could not be stored just now; send it again.",
                status=503,
                code="feedback_unavailable",
            ),
        )
    body = {
        "object": "feedback",
        "id": saved.id,
        "request_id": asked.request_id,
        "record_id": saved.record_id,
        "score": asked.score,
        "flagged": saved.is_flagged,
    }
    response = Response(orjson.dumps(body), mimetype="application/json")
    ctx.response_body = response.get_data(as_text=True)
    response.headers.update(gateway_headers(ctx))
    pipeline.record(ctx)
    return response


def _parse(raw: bytes) -> FeedbackRequest:
    try:
        return FeedbackRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{param or 'body'}: {first['msg']}.", param=param) from exc
