"""Anthropic-dialect routes."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from proxy.endpoints.anthropic_count_tokens import CountTokens
from proxy.endpoints.anthropic_messages import Messages
from proxy.pipeline import Pipeline

blueprint = Blueprint("anthropic", __name__)
MESSAGES = Messages()
COUNT_TOKENS = CountTokens()


def _pipeline() -> Pipeline:
    return current_app.extensions["metergate"].pipeline  # type: ignore[no-any-return]


@blueprint.post("/v1/messages")
def messages() -> Response:
    return _pipeline().handle(MESSAGES, request)


@blueprint.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    return _pipeline().handle(COUNT_TOKENS, request)
