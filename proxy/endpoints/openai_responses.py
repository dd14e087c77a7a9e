"""``POST /v1/responses``: the OpenAI Responses dialect.

The request's ``input`` is a string or a list of items (messages with text parts,
function calls and their outputs); screening reads them and ``instructions``. Usage
is ``input_tokens`` (``input_tokens_details.cached_tokens`` of them at the cached
rate) and ``output_tokens``, reasoning tokens included. The stream is typed events
(``response.created`` … ``response.completed``), forwarded unchanged; the terminal
event carries the whole response, usage included.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.endpoints.base import JsonObject, RequestFacts, int_or_none, text_of
from proxy.endpoints.openai_chat import (
    read_openai_usage,
    read_positive_int,
    read_stream_flag,
    require_model,
)
from proxy.endpoints.sse import SseEvent
from proxy.errors import InvalidRequest
from shared.pricing import Usage

# Events that end a stream: each carries the whole response with its usage.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
LIFECYCLE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})


def read_input_text(raw: Any) -> tuple[list[str], int]:
    """The text of an ``input`` (a string or a list of items) and its item count.

    Raises InvalidRequest when it is neither.
    """
    if raw is None:
        return [], 0
    if isinstance(raw, str):
        return [raw], 1
    if not isinstance(raw, list):
        raise InvalidRequest(
            "Invalid 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    texts: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid 'input[{index}]': expected an object.", param="input")
        texts.extend(text_of(item.get("content")))
        for key in ("output", "arguments"):  # a tool's result, a call's arguments
            texts.extend(text_of(item.get(key)))
    return texts, len(raw)


def read_text_format_schema(text: Any) -> JsonObject | None:
    """The schema of ``text.format`` ``{"type": "json_schema", "schema": …}``."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    return schema if isinstance(schema, dict) else None


class Responses:
    name = "responses"
    dialect = "openai"
    provider = "openai"
    upstream_path = "/responses"
    keeps_answers = True

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        model = require_model(body)
        prompt_text, item_count = read_input_text(body.get("input"))
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            prompt_text.insert(0, instructions)
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise InvalidRequest(
                "'previous_response_id' must be a string", param="previous_response_id"
            )
        end_user = next(
            (
                body[name]
                for name in ("user", "safety_identifier")
                if isinstance(body.get(name), str)
            ),
            None,
        )
        return RequestFacts(
            model=model,
            is_stream=read_stream_flag(body),
            end_user=end_user or headers.get("x-metergate-end-user") or None,
            max_tokens=read_positive_int(body, "max_output_tokens"),
            prompt_text=prompt_text,
            message_count=item_count,
            output_schema=read_text_format_schema(body.get("text")),
            previous_response_id=previous or None,
        )

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        return {**body, "model": upstream_model}

    def read_usage(self, answer: JsonObject) -> Usage:
        return read_openai_usage(answer.get("usage"))

    def stream_reader(self, facts: RequestFacts) -> ResponsesStreamReader:
        return ResponsesStreamReader()

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        return None


class ResponsesStreamReader:
    """Follows a Responses event stream; the terminal event's response is the answer.

    A stream cut off before its terminal event is assembled from the items seen so far:
    finished items as they were sent, unfinished ones from their deltas.
    """

    def __init__(self) -> None:
        self._response: JsonObject = {}
        self._final: JsonObject | None = None
        self._items: dict[int, JsonObject] = {}
        self._done_items: dict[int, JsonObject] = {}
        self._error: JsonObject | None = None

    @property
    def is_complete(self) -> bool:
        return self._final is not None

    @property
    def upstream_id(self) -> str | None:
        value = self._response.get("id")
        return value if isinstance(value, str) else None

    def usage(self) -> Usage:
        return read_openai_usage((self._final or self._response).get("usage"))

    def feed(self, event: SseEvent) -> bytes | None:
        try:
            data = orjson.loads(event.data) if event.data else None
        except orjson.JSONDecodeError:
            return event.raw
        if isinstance(data, dict):
            self._take(str(data.get("type") or event.event), data)
        return event.raw

    def _take(self, kind: str, data: JsonObject) -> None:
        response = data.get("response")
        if kind in LIFECYCLE_EVENTS and isinstance(response, dict):
            self._response = response
        elif kind in TERMINAL_EVENTS and isinstance(response, dict):
            self._response = response
            self._final = response
        elif kind == "response.output_item.added":
            self._item_added(data)
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            self._done_items[_index(data)] = data["item"]
        elif kind == "response.content_part.added":
            item = self._items.get(_index(data))
            if item is not None and isinstance(data.get("part"), dict):
                item.setdefault("content", []).append(dict(data["part"]))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            self._add_text(data, "text" if kind == "response.output_text.delta" else "refusal")
        elif kind == "response.function_call_arguments.delta":
            item = self._items.get(_index(data))
            if item is not None:
                item["arguments"] = str(item.get("arguments") or "") + str(data.get("delta", ""))
        elif kind == "error":
            self._error = data

    def _item_added(self, data: JsonObject) -> None:
        item = data.get("item")
        if isinstance(item, dict):
            copied = dict(item)
            if isinstance(copied.get("content"), list):
                copied["content"] = [dict(part) for part in copied["content"]]
            self._items[_index(data)] = copied

    def _add_text(self, data: JsonObject, field: str) -> None:
        item = self._items.get(_index(data))
        content = item.get("content") if item is not None else None
        position = int_or_none(data.get("content_index")) or 0
        if isinstance(content, list) and 0 <= position < len(content):
            part = content[position]
            part[field] = str(part.get(field) or "") + str(data.get("delta", ""))

    def assembled(self) -> JsonObject:
        if self._final is not None and isinstance(self._final.get("output"), list):
            return self._final
        indexes = sorted(self._items.keys() | self._done_items.keys())
        output = [self._done_items.get(index) or self._items[index] for index in indexes]
        answer = {**(self._final or self._response), "output": output}
        if self._error is not None:
            answer["error"] = {k: v for k, v in self._error.items() if k != "sequence_number"}
        return answer


def _index(data: JsonObject) -> int:
    return int_or_none(data.get("output_index")) or 0
