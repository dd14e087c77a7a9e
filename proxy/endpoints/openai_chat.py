"""``POST /v1/chat/completions``: the OpenAI chat dialect."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.endpoints.base import JsonObject, RequestFacts, int_or_none, text_of
from proxy.endpoints.sse import SseEvent
from proxy.errors import InvalidRequest
from shared.pricing import Usage

USAGE_NULL = b',"usage":null'


def read_openai_usage(usage: Any) -> Usage:
    """Usage from an OpenAI ``usage`` object (chat style or Responses style)."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = int_or_none(usage.get("prompt_tokens", usage.get("input_tokens"))) or 0
    completion = int_or_none(usage.get("completion_tokens", usage.get("output_tokens"))) or 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cache_read_tokens=cached or 0)


def require_model(body: JsonObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("you must provide a model parameter", param="model")
    return model


def read_stream_flag(body: JsonObject) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return stream


def read_positive_int(body: JsonObject, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if int_or_none(value) is None or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return int(value)


def read_output_schema(response_format: Any) -> JsonObject | None:
    """The schema of a ``{"type": "json_schema", "json_schema": {"schema": …}}`` format."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


class ChatCompletions:
    name = "chat.completions"
    dialect = "openai"
    provider = "openai"
    upstream_path = "/chat/completions"
    keeps_answers = False

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        prompt_text: list[str] = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(
                    f"messages[{index}] must be an object with a 'role'",
                    param=f"messages[{index}]",
                )
            prompt_text.extend(text_of(message.get("content")))
        is_stream = read_stream_flag(body)
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        max_tokens = read_positive_int(body, "max_completion_tokens") or read_positive_int(
            body, "max_tokens"
        )
        end_user = body.get("user") if isinstance(body.get("user"), str) else None
        return RequestFacts(
            model=model,
            is_stream=is_stream,
            end_user=end_user or headers.get("x-metergate-end-user") or None,
            max_tokens=max_tokens,
            wants_stream_usage=bool(options and options.get("include_usage")),
            prompt_text=prompt_text,
            message_count=len(messages),
            output_schema=read_output_schema(body.get("response_format")),
        )

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        prepared = dict(body)
        prepared["model"] = upstream_model
        if facts.is_stream:
            # Every stream is priced: ask for usage even when the client did not.
            prepared["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        return prepared

    def read_usage(self, answer: JsonObject) -> Usage:
        return read_openai_usage(answer.get("usage"))

    def stream_reader(self, facts: RequestFacts) -> ChatStreamReader:
        return ChatStreamReader(facts)

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        return None


class ChatStreamReader:
    """Assembles chat.completion.chunk events; hides the usage chunk unless asked for."""

    def __init__(self, facts: RequestFacts) -> None:
        self._wants_usage = facts.wants_stream_usage
        self._usage = Usage()
        self._usage_body: JsonObject | None = None  # the provider's own, kept for the answer
        self._choices: dict[int, JsonObject] = {}
        self._head: JsonObject = {}
        self._done = False

    @property
    def is_complete(self) -> bool:
        return self._done

    @property
    def upstream_id(self) -> str | None:
        value = self._head.get("id")
        return value if isinstance(value, str) else None

    def usage(self) -> Usage:
        return self._usage

    def feed(self, event: SseEvent) -> bytes | None:
        if event.data == b"[DONE]":
            self._done = True
            return event.raw
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return event.raw
        if not isinstance(chunk, dict):
            return event.raw
        if not self._head:
            self._head = {k: chunk.get(k) for k in ("id", "model", "created", "system_fingerprint")}
        if chunk.get("usage"):
            self._usage = read_openai_usage(chunk["usage"])
            if isinstance(chunk["usage"], dict):
                self._usage_body = chunk["usage"]
            if not chunk.get("choices") and not self._wants_usage:
                return None
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                self._add_choice_delta(choice)
        if not self._wants_usage and USAGE_NULL in event.raw:
            return event.raw.replace(USAGE_NULL, b"", 1)
        return event.raw

    def _add_choice_delta(self, choice: JsonObject) -> None:
        index = choice.get("index", 0)
        state = self._choices.setdefault(
            index, {"index": index, "role": "assistant", "content": [], "tool_calls": {}}
        )
        delta = choice.get("delta") or {}
        if isinstance(delta.get("role"), str):
            state["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            state["content"].append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            state.setdefault("refusal", []).append(delta["refusal"])
        for call in delta.get("tool_calls") or []:
            slot = state["tool_calls"].setdefault(
                call.get("index", 0), {"id": None, "type": "function", "name": "", "arguments": []}
            )
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"].append(function.get("arguments") or "")
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def assembled(self) -> JsonObject:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: JsonObject = {
                "role": state["role"],
                "content": "".join(state["content"]) if state["content"] else None,
            }
            if "refusal" in state:
                message["refusal"] = "".join(state["refusal"])
            if state["tool_calls"]:
                message["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": call["type"],
                        "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
                    }
                    for _, call in sorted(state["tool_calls"].items())
                ]
            choices.append(
                {"index": index, "message": message, "finish_reason": state.get("finish_reason")}
            )
        usage = self._usage
        return {
            **self._head,
            "object": "chat.completion",
            "choices": choices,
            "usage": self._usage_body
            or {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            },
        }
