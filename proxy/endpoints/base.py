"""What the pipeline needs to know about an endpoint: how to read its request and answer.

An endpoint adapter is pure: no I/O, no Flask. The pipeline owns the order of
stages; the adapter only translates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.endpoints.sse import SseEvent
from shared.pricing import Usage

JsonObject = dict[str, Any]


@dataclass(slots=True)
class RequestFacts:
    """What an endpoint read from a request body."""

    model: str
    is_stream: bool
    end_user: str | None = None
    max_tokens: int | None = None
    wants_stream_usage: bool = False
    prompt_text: list[str] = field(default_factory=list)
    message_count: int = 0
    # The JSON schema the answer's content must follow (OpenAI ``response_format``).
    output_schema: JsonObject | None = None
    # A stored answer the request builds on (Responses ``previous_response_id``): it must
    # belong to the caller's tenant.
    previous_response_id: str | None = None
    # Tokens sent as token ids rather than text (embeddings of token arrays).
    prompt_token_ids: int = 0
    # False: the answer has no completion tokens to allow for (embeddings).
    has_completion: bool = True
    # False: a free call (token counting): no token charge, no quota hold, no cost.
    is_billed: bool = True


class StreamReader(Protocol):
    """Follows one streamed answer: usage, the assembled body, what to forward."""

    def feed(self, event: SseEvent) -> bytes | None:
        """Take one event; returns the bytes to forward to the client (None: drop it)."""
        ...

    def usage(self) -> Usage: ...

    def assembled(self) -> JsonObject:
        """The answer as one body, as a non-streamed call would have returned it."""
        ...

    @property
    def is_complete(self) -> bool:
        """True once the terminal event arrived (a truncated stream never gets here)."""
        ...

    @property
    def upstream_id(self) -> str | None: ...


class Endpoint(Protocol):
    name: str  # e.g. "chat.completions": recorded as the record's endpoint
    dialect: str  # the caller's dialect for errors: "openai" or "anthropic"
    provider: str  # the provider serving this route
    upstream_path: str  # relative to the provider SDK's base URL
    # True: the provider keeps answers by id (Responses API), so the gateway remembers
    # which tenant each id it hands out belongs to.
    keeps_answers: bool

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        """Validate and read the body; raises InvalidRequest naming the field."""
        ...

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        """The body to send upstream (unknown fields untouched)."""
        ...

    def read_usage(self, answer: JsonObject) -> Usage: ...

    def stream_reader(self, facts: RequestFacts) -> StreamReader: ...

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        """What the request log keeps of a whole answer; None: the answer as it came."""
        ...


def text_of(content: Any) -> list[str]:
    """The text parts of a message content (a string or a list of typed blocks)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                for key in ("text", "content", "input_text"):
                    value = block.get(key)
                    if isinstance(value, str):
                        texts.append(value)
                    elif isinstance(value, list):
                        texts.extend(text_of(value))
    return texts


def answer_id(answer: JsonObject) -> str | None:
    """The provider's id of an answer (``chatcmpl-…``, ``msg_…``, ``resp_…``), if any."""
    value = answer.get("id")
    return value if isinstance(value, str) and value else None


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
