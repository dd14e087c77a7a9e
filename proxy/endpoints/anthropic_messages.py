"""``POST /v1/messages``: the Anthropic Messages dialect."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.endpoints.base import JsonObject, RequestFacts, int_or_none, text_of
from proxy.endpoints.openai_chat import read_positive_int, read_stream_flag, require_model
from proxy.endpoints.sse import SseEvent
from proxy.errors import InvalidRequest
from shared.pricing import Usage


def read_anthropic_usage(usage: Any) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; ours includes them."""
    if not isinstance(usage, dict):
        return Usage()
    uncached = int_or_none(usage.get("input_tokens")) or 0
    read = int_or_none(usage.get("cache_read_input_tokens")) or 0
    write = int_or_none(usage.get("cache_creation_input_tokens")) or 0
    return Usage(
        prompt_tokens=uncached + read + write,
        completion_tokens=int_or_none(usage.get("output_tokens")) or 0,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


class Messages:
    name = "messages"
    dialect = "anthropic"
    provider = "anthropic"
    upstream_path = "/v1/messages"
    keeps_answers = False

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages: Field required (a non-empty array)", param="messages")
        prompt_text = text_of(body.get("system"))
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise InvalidRequest(
                    f"messages.{index}: each message needs a role of 'user' or 'assistant'",
                    param=f"messages.{index}",
                )
            prompt_text.extend(text_of(message.get("content")))
        max_tokens = read_positive_int(body, "max_tokens")
        if max_tokens is None:
            raise InvalidRequest("max_tokens: Field required", param="max_tokens")
        metadata = body.get("metadata")
        end_user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return RequestFacts(
            model=model,
            is_stream=read_stream_flag(body),
            end_user=(end_user if isinstance(end_user, str) else None)
            or headers.get("x-metergate-end-user")
            or None,
            max_tokens=max_tokens,
            prompt_text=prompt_text,
            message_count=len(messages),
        )

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        prepared = dict(body)
        prepared["model"] = upstream_model
        return prepared

    def read_usage(self, answer: JsonObject) -> Usage:
        return read_anthropic_usage(answer.get("usage"))

    def stream_reader(self, facts: RequestFacts) -> MessageStreamReader:
        return MessageStreamReader()

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        return None


class MessageStreamReader:
    """Assembles a Messages event stream into the message a non-stream call returns."""

    def __init__(self) -> None:
        self._message: JsonObject = {}
        self._usage: JsonObject = {}
        self._blocks: dict[int, JsonObject] = {}
        self._partial_json: dict[int, list[str]] = {}
        self._done = False

    @property
    def is_complete(self) -> bool:
        return self._done

    @property
    def upstream_id(self) -> str | None:
        value = self._message.get("id")
        return value if isinstance(value, str) else None

    def usage(self) -> Usage:
        return read_anthropic_usage(self._usage)

    def feed(self, event: SseEvent) -> bytes | None:
        try:
            data = orjson.loads(event.data) if event.data else {}
        except orjson.JSONDecodeError:
            return event.raw
        if isinstance(data, dict):
            self._take(event.event or str(data.get("type")), data)
        return event.raw

    def _take(self, kind: str, data: JsonObject) -> None:
        if kind == "message_start":
            self._message = dict(data.get("message") or {})
            self._usage.update(self._message.get("usage") or {})
        elif kind == "content_block_start":
            index = data.get("index", 0)
            self._blocks[index] = dict(data.get("content_block") or {})
        elif kind == "content_block_delta":
            self._add_delta(data.get("index", 0), data.get("delta") or {})
        elif kind == "content_block_stop":
            index = data.get("index", 0)
            parts = self._partial_json.pop(index, None)
            if parts is not None and index in self._blocks:
                try:
                    self._blocks[index]["input"] = orjson.loads("".join(parts) or "{}")
                except orjson.JSONDecodeError:
                    self._blocks[index]["input"] = "".join(parts)
        elif kind == "message_delta":
            self._message.update(data.get("delta") or {})
            self._usage.update(
                {k: v for k, v in (data.get("usage") or {}).items() if v is not None}
            )
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self._message["error"] = data.get("error")

    def _add_delta(self, index: int, delta: JsonObject) -> None:
        block = self._blocks.setdefault(index, {"type": "text", "text": ""})
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + str(delta.get("text", ""))
        elif kind == "input_json_delta":
            self._partial_json.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
        elif kind == "signature_delta":
            block["signature"] = str(delta.get("signature", ""))

    def assembled(self) -> JsonObject:
        message = dict(self._message)
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        message["usage"] = dict(self._usage)
        return message
