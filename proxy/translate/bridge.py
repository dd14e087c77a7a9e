"""Which endpoint can be served by which other provider, and how.

A ``Bridge`` serves calls of one endpoint (the caller's dialect) with a model of another
provider: it translates the request into the other provider's endpoint, and that
endpoint's answer back. Only chat completions <-> messages have one; the other endpoints
(Responses, embeddings, token counting) have no counterpart, so their fallback chains
keep to their own provider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.endpoints.anthropic_messages import Messages
from proxy.endpoints.base import Endpoint, JsonObject
from proxy.endpoints.openai_chat import ChatCompletions
from proxy.translate.anthropic_to_openai import chat_request, message_from_completion
from proxy.translate.openai_to_anthropic import completion_from_message, messages_request
from proxy.translate.translated import Translated


@dataclass(frozen=True, slots=True)
class Bridge:
    # The other provider's endpoint: its path, usage, stream reader and upstream body.
    target: Endpoint
    # (the caller's request body, max_tokens to set when the caller set none) -> request
    translate_request: Callable[[JsonObject, int], Translated]
    # the target's whole answer -> the answer in the caller's dialect
    translate_answer: Callable[[JsonObject], JsonObject]


def _chat_via_messages(body: JsonObject, default_max_tokens: int) -> Translated:
    return messages_request(body, default_max_tokens)


def _messages_via_chat(body: JsonObject, default_max_tokens: int) -> Translated:
    return chat_request(body)  # a Messages request always carries its max_tokens


def _completion_now(message: JsonObject) -> JsonObject:
    return completion_from_message(message, created=int(time.time()))


BRIDGES: dict[tuple[str, str], Bridge] = {
    ("chat.completions", "anthropic"): Bridge(Messages(), _chat_via_messages, _completion_now),
    ("messages", "openai"): Bridge(ChatCompletions(), _messages_via_chat, message_from_completion),
}


def bridge_for(endpoint: str, provider: str) -> Bridge | None:
    """The bridge serving ``endpoint`` calls with a model of ``provider``; None: none can."""
    return BRIDGES.get((endpoint, provider))
