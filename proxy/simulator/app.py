"""The aiohttp application: the simulated API routes and the `/_sim` control routes.

Routes (both providers live under `/v1`, as the SDKs expect: OpenAI base URL
`http://host:port/v1`, Anthropic base URL `http://host:port`):

    POST   /v1/chat/completions           OpenAI chat (stream or not)
    POST   /v1/responses                  OpenAI Responses (stream or not)
    GET    /v1/responses/{response_id}    retrieve a stored response
    DELETE /v1/responses/{response_id}    delete it
    POST   /v1/responses/{response_id}/cancel
    POST   /v1/embeddings                 OpenAI embeddings
    POST   /v1/moderations                OpenAI moderations
    GET    /v1/models, /v1/models/{model} OpenAI model catalogue
    POST   /v1/messages                   Anthropic Messages (stream or not)
    POST   /v1/messages/count_tokens      Anthropic token counting

Any other `/v1/...` path gets an OpenAI-shaped 404. Control routes: see `control`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from .anthropic_messages import count_message_tokens, create_message
from .config import SimulatorConfig
from .control import add_control_routes
from .dispatch import Endpoint, serve
from .errors import Dialect
from .openai_chat import create_chat_completion
from .openai_embeddings import create_embeddings
from .openai_models import list_models, retrieve_model
from .openai_moderations import create_moderation
from .openai_responses import (
    cancel_response,
    create_response,
    delete_response,
    list_input_items,
    retrieve_response,
)
from .state import STATE_KEY, SimulatorState

MAX_BODY_BYTES: Final = 64 * 1024 * 1024
_OPENAI: Final = Dialect.OPENAI
_ANTHROPIC: Final = Dialect.ANTHROPIC

ENDPOINTS: Final = (
    Endpoint("POST", "/v1/chat/completions", create_chat_completion, _OPENAI),
    Endpoint("POST", "/v1/responses", create_response, _OPENAI),
    Endpoint("GET", "/v1/responses/{response_id}", retrieve_response, _OPENAI),
    Endpoint("DELETE", "/v1/responses/{response_id}", delete_response, _OPENAI),
    Endpoint("POST", "/v1/responses/{response_id}/cancel", cancel_response, _OPENAI),
    Endpoint("GET", "/v1/responses/{response_id}/input_items", list_input_items, _OPENAI),
    Endpoint("POST", "/v1/embeddings", create_embeddings, _OPENAI),
    Endpoint("POST", "/v1/moderations", create_moderation, _OPENAI),
    Endpoint("GET", "/v1/models", list_models, _OPENAI),
    Endpoint("GET", "/v1/models/{model}", retrieve_model, _OPENAI),
    Endpoint("POST", "/v1/messages", create_message, _ANTHROPIC),
    Endpoint("POST", "/v1/messages/count_tokens", count_message_tokens, _ANTHROPIC),
)


def make_app(config: SimulatorConfig | None = None) -> web.Application:
    """A fresh simulator app with its own state; nothing is started or opened here."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = SimulatorState(config or SimulatorConfig())
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, _bind(endpoint))
    add_control_routes(app.router)
    app.router.add_route("*", "/v1/{tail:.*}", unknown_route)
    return app


def _bind(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve(request, endpoint)

    return handle


async def unknown_route(request: web.Request) -> web.Response:
    """OpenAI's answer to a path it does not serve."""
    return web.json_response(
        {
            "error": {
                "message": f"Invalid URL ({request.method} {request.path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
        status=404,
    )
