"""OpenAI-dialect routes."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from proxy.endpoints.openai_chat import ChatCompletions
from proxy.endpoints.openai_embeddings import Embeddings
from proxy.endpoints.openai_responses import Responses
from proxy.pipeline import Pipeline
from proxy.routes.models import list_models
from proxy.stored_responses import CANCEL, DELETE, INPUT_ITEMS, RETRIEVE, handle_stored

blueprint = Blueprint("openai", __name__)
CHAT = ChatCompletions()
RESPONSES = Responses()
EMBEDDINGS = Embeddings()


def _pipeline() -> Pipeline:
    return current_app.extensions["metergate"].pipeline  # type: ignore[no-any-return]


@blueprint.post("/v1/chat/completions")
def chat_completions() -> Response:
    return _pipeline().handle(CHAT, request)


@blueprint.post("/v1/responses")
def responses() -> Response:
    return _pipeline().handle(RESPONSES, request)


@blueprint.get("/v1/responses/<response_id>")
def retrieve_response(response_id: str) -> Response:
    return handle_stored(_pipeline(), RETRIEVE, request, response_id)


@blueprint.delete("/v1/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    return handle_stored(_pipeline(), DELETE, request, response_id)


@blueprint.post("/v1/responses/<response_id>/cancel")
def cancel_response(response_id: str) -> Response:
    return handle_stored(_pipeline(), CANCEL, request, response_id)


@blueprint.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str) -> Response:
    return handle_stored(_pipeline(), INPUT_ITEMS, request, response_id)


@blueprint.post("/v1/embeddings")
def embeddings() -> Response:
    return _pipeline().handle(EMBEDDINGS, request)


@blueprint.get("/v1/models")
def models() -> Response:
    return list_models(_pipeline(), request)
