"""Anthropic-dialect routes."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from proxy.endpoints.anthropic_messages import Messages

blueprint = Blueprint("anthropic", __name__)
MESSAGES = Messages()


@blueprint.post("/v1/messages")
def messages() -> Response:
    return current_app.extensions["metergate"].pipeline.handle(MESSAGES, request)  # type: ignore[no-any-return]
