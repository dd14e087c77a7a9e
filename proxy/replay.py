"""Replay a whole answer as the event stream its dialect would have sent.

A cached answer is stored whole (as a non-streamed call returns it); a streamed
request answered from it gets a synthesized stream the official SDKs parse into
the same answer:

- OpenAI chat: ``chat.completion.chunk`` events (a role delta, content / refusal
  / tool-call deltas, a finish chunk per choice), the usage chunk only when the
  request set ``stream_options.include_usage``, then ``data: [DONE]``.
- Anthropic messages: ``message_start``, per block ``content_block_start`` /
  ``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``,
  ``signature_delta``, ``citations_delta``) / ``content_block_stop``, then
  ``message_delta`` with the stop reason and usage, and ``message_stop``.
- OpenAI responses: ``response.created``, ``response.in_progress``, per output item
  ``response.output_item.added``, its text (``response.content_part.added``,
  ``response.output_text.delta`` / ``.done`` or ``response.refusal.delta`` / ``.done``,
  ``response.content_part.done``) or call arguments
  (``response.function_call_arguments.delta`` / ``.done``), ``response.output_item.done``;
  then ``response.completed`` (or ``response.incomplete``) carrying the whole response.
  Items of other kinds (reasoning, built-in tool calls) arrive whole in their two item
  events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from proxy.endpoints.base import JsonObject, RequestFacts

PIECE_CHARS = 64
TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Known only at the end of a stream: sent in ``message_delta`` when the answer has them.
LATE_MESSAGE_FIELDS = ("stop_details", "container")
USAGE_DELTA_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "server_tool_use",
)

Replayer = Callable[[JsonObject, RequestFacts], list[bytes]]


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` cut into consecutive pieces of at most ``size`` characters."""
    for start in range(0, len(text), size):
        yield text[start : start + size]


# -- OpenAI chat completions ---------------------------------------------------------------


def openai_chat_events(body: JsonObject, facts: RequestFacts) -> list[bytes]:
    """The ``chat.completion.chunk`` stream carrying the completion ``body``."""
    head: JsonObject = {
        "id": body.get("id"),
        "object": "chat.completion.chunk",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    for name in ("service_tier", "system_fingerprint"):
        if name in body:
            head[name] = body[name]
    include_usage = facts.wants_stream_usage

    def chunk(index: int, delta: JsonObject, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload: JsonObject = {**head, "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return _data(payload)

    frames: list[bytes] = []
    for position, choice in enumerate(body.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        frames.extend(chunk(index, delta) for delta in _message_deltas(choice.get("message")))
        frames.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage:
        frames.append(_data({**head, "choices": [], "usage": body.get("usage")}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def _message_deltas(message: Any) -> Iterator[JsonObject]:
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    tool_calls = message.get("tool_calls") or []
    yield {
        "role": message.get("role") or "assistant",
        "content": "" if isinstance(content, str) else None,
        "refusal": None,
    }
    if isinstance(content, str):
        yield from ({"content": piece} for piece in pieces(content))
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        yield from ({"refusal": piece} for piece in pieces(refusal))
    for index, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        opening = {
            "index": index,
            "id": call.get("id"),
            "type": call.get("type", "function"),
            "function": {"name": function.get("name"), "arguments": ""},
        }
        yield {"tool_calls": [opening]}
        for piece in pieces(str(function.get("arguments") or "")):
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
    function_call = message.get("function_call")  # the deprecated single-function form
    if isinstance(function_call, dict):
        yield {"function_call": function_call}


def _data(payload: JsonObject) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# -- Anthropic messages --------------------------------------------------------------------


def anthropic_message_events(body: JsonObject, facts: RequestFacts) -> list[bytes]:
    """The Messages event stream carrying the message ``body``."""
    raw_usage = body.get("usage")
    usage: JsonObject = raw_usage if isinstance(raw_usage, dict) else {}
    start = {
        **body,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": min(1, int(usage.get("output_tokens") or 0))},
    }
    frames = [_event("message_start", {"message": start})]
    for index, block in enumerate(body.get("content") or []):
        if isinstance(block, dict):
            frames.extend(_block_events(index, block))
    delta = {name: body.get(name) for name in ("stop_reason", "stop_sequence")}
    delta.update({name: body[name] for name in LATE_MESSAGE_FIELDS if body.get(name) is not None})
    final_usage = {name: usage[name] for name in USAGE_DELTA_FIELDS if name in usage}
    frames.append(_event("message_delta", {"delta": delta, "usage": final_usage}))
    frames.append(_event("message_stop", {}))
    return frames


def _block_events(index: int, block: JsonObject) -> Iterator[bytes]:
    kind = block.get("type")
    deltas: list[JsonObject] = []
    if kind == "text":
        opening: JsonObject = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in pieces(str(block.get("text", "")))]
        deltas += [
            {"type": "citations_delta", "citation": citation}
            for citation in block.get("citations") or []
        ]
    elif kind in TOOL_INPUT_BLOCKS:
        opening = {**block, "input": {}}
        arguments = orjson.dumps(block.get("input", {})).decode()
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(arguments)]
    elif kind == "thinking":
        opening = {"type": "thinking", "thinking": "", "signature": ""}
        thinking = str(block.get("thinking", ""))
        deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(thinking)]
        deltas.append({"type": "signature_delta", "signature": str(block.get("signature", ""))})
    else:  # redacted thinking, tool results, …: whole in their start event
        opening = block
    yield _event("content_block_start", {"index": index, "content_block": opening})
    for delta in deltas:
        yield _event("content_block_delta", {"index": index, "delta": delta})
    yield _event("content_block_stop", {"index": index})


def _event(kind: str, payload: JsonObject) -> bytes:
    data = orjson.dumps({"type": kind, **payload})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


# -- OpenAI responses ----------------------------------------------------------------------


def openai_response_events(body: JsonObject, facts: RequestFacts) -> list[bytes]:
    """The Responses event stream carrying the response ``body``."""
    frames: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(frames), **fields}
        frames.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

    pending = {**body, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, item in enumerate(body.get("output") or []):
        if isinstance(item, dict):
            for kind, fields in _output_item_events(index, item):
                emit(kind, **fields)
    final = "response.incomplete" if body.get("status") == "incomplete" else "response.completed"
    emit(final, response=body)
    return frames


def _output_item_events(index: int, item: JsonObject) -> Iterator[tuple[str, JsonObject]]:
    kind = item.get("type")
    where: JsonObject = {"item_id": item.get("id"), "output_index": index}
    if kind == "message":
        opening: JsonObject = {**item, "content": [], "status": "in_progress"}
    elif kind == "function_call":
        opening = {**item, "arguments": "", "status": "in_progress"}
    else:
        opening = item
    yield "response.output_item.added", {"output_index": index, "item": opening}
    if kind == "message":
        for position, part in enumerate(item.get("content") or []):
            if isinstance(part, dict):
                yield from _content_part_events({**where, "content_index": position}, part)
    elif kind == "function_call":
        arguments = str(item.get("arguments") or "")
        for piece in pieces(arguments):
            yield "response.function_call_arguments.delta", {**where, "delta": piece}
        done = {**where, "name": item.get("name"), "arguments": arguments}
        yield "response.function_call_arguments.done", done
    yield "response.output_item.done", {"output_index": index, "item": item}


def _content_part_events(where: JsonObject, part: JsonObject) -> Iterator[tuple[str, JsonObject]]:
    kind = part.get("type")
    field = {"output_text": "text", "refusal": "refusal"}.get(str(kind))
    opening = {**part, field: ""} if field is not None else part
    yield "response.content_part.added", {**where, "part": opening}
    if field == "text":
        text = str(part.get("text") or "")
        for piece in pieces(text):
            yield "response.output_text.delta", {**where, "delta": piece, "logprobs": []}
        yield "response.output_text.done", {**where, "text": text, "logprobs": []}
    elif field == "refusal":
        refusal = str(part.get("refusal") or "")
        for piece in pieces(refusal):
            yield "response.refusal.delta", {**where, "delta": piece}
        yield "response.refusal.done", {**where, "refusal": refusal}
    yield "response.content_part.done", {**where, "part": part}


REPLAYERS: dict[str, Replayer] = {
    "chat.completions": openai_chat_events,
    "messages": anthropic_message_events,
    "responses": openai_response_events,
}


def replay_stream(endpoint: str, body: JsonObject, facts: RequestFacts) -> list[bytes]:
    """The events replaying ``body`` for ``endpoint``; KeyError when it has no replayer."""
    return REPLAYERS[endpoint](body, facts)
