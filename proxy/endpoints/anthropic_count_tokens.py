"""``POST /v1/messages/count_tokens``: how many input tokens a Messages request holds.

Authenticated, allow-listed and rate-limited (one request, no tokens) like any call,
then passed through. Nothing is generated, so nothing is billed: no quota hold, no
cost, no tokens in the record (the count is in its answer). Not cached, not screened
for content (nothing reaches a model).
"""

from __future__ import annotations

from proxy.endpoints.base import JsonObject, RequestFacts, StreamReader
from proxy.endpoints.openai_chat import require_model
from proxy.errors import InvalidRequest
from shared.pricing import Usage


class CountTokens:
    name = "messages.count_tokens"
    dialect = "anthropic"
    provider = "anthropic"
    upstream_path = "/v1/messages/count_tokens"
    keeps_answers = False

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages: Field required (a non-empty array)", param="messages")
        return RequestFacts(
            model=model,
            is_stream=False,
            end_user=headers.get("x-metergate-end-user") or None,
            message_count=len(messages),
            has_completion=False,
            is_billed=False,
        )

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        return {**body, "model": upstream_model}

    def read_usage(self, answer: JsonObject) -> Usage:
        return Usage()

    def stream_reader(self, facts: RequestFacts) -> StreamReader:
        raise InvalidRequest("count_tokens does not stream.", param="stream")

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        return None
