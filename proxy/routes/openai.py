"""OpenAI-dialect routes."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from proxy.endpoints.openai_chat import ChatCompletions
from proxy.routes.models import list_models

blueprint = Blueprint("openai", __name__)
CHAT = ChatCompletions()


@blueprint.post("/v1/chat/completions")
def chat_completions() -> Response:
    return current_app.extensions["metergate"].pipeline.handle(CHAT, request)  # type: ignore[no-any-return]


@blueprint.get("/v1/models")
def models() -> Response:
    return list_models(current_app.extensions["metergate"].pipeline, request)
