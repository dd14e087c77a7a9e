"""`POST /v1/chat/completions`: non-streamed and streamed chat completions.

Answer choice: a tool call when `tools` holds function tools, `tool_choice` is not
"none" and the last message is not a `tool` result (the named tool for a
`{"type": "function", ...}` choice, else the first function tool); else a JSON document
for `response_format` `json_schema` / `json_object`; else deterministic text. One choice
only (`n` is ignored); `stop` sequences are not applied.
"""

from __future__ import annotations

import time
from typing import Any

from .completion import Completion, ToolSpec, broken_json, compose, group_pieces
from .errors import Dialect, invalid_request, missing_field
from .faults import Fault
from .openai_prompt import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    chat_usage,
    content_tokens,
    optional_positive_int,
    require_model,
    system_fingerprint,
)
from .prompt_cache import PromptUnit, openai_cached_tokens
from .reply import DONE_FRAME, Call, Reply, StreamReply, data_frame, json_reply, new_id
from .state import JsonObject
from .text import count_json_tokens, count_tokens, digest_of


def create_chat_completion(call: Call) -> Reply:
    """Answer one chat-completions request (see module docstring)."""
    body = call.body
    model = require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise missing_field(Dialect.OPENAI, "messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    max_tokens = optional_positive_int(body, "max_completion_tokens", "max_tokens")
    units = _prompt_units(body, messages)
    prompt_tokens = sum(unit.tokens for unit in units) + REPLY_PRIMING_TOKENS
    cached = openai_cached_tokens(call.state.prefixes, model, units, prompt_tokens)
    digest = digest_of(model, messages, call.state.config.seed)
    schema, is_json_object = _response_format(body.get("response_format"))
    completion = compose(
        digest,
        max_tokens=max_tokens,
        tool=_chosen_tool(body, messages),
        schema=schema,
        is_json_object=is_json_object,
    )
    if call.fault is Fault.INVALID_JSON_OUTPUT and (schema is not None or is_json_object):
        completion = broken_json(completion)
    usage = chat_usage(prompt_tokens, completion.tokens, cached)
    base: JsonObject = {
        "id": new_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
    }
    tokens = prompt_tokens + completion.tokens
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return StreamReply(_stream_frames(base, completion, usage, include_usage), tokens)
    return json_reply(_completion_object(base, completion, usage), tokens=tokens)


def _prompt_units(body: JsonObject, messages: list[Any]) -> list[PromptUnit]:
    units: list[PromptUnit] = []
    tools = body.get("tools")
    if tools:
        units.append(PromptUnit(tools, count_json_tokens(tools)))
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(
                f"Invalid type for 'messages[{index}]': expected an object.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
        tokens = MESSAGE_OVERHEAD_TOKENS + content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            tokens += count_tokens(name)
        if message.get("tool_calls"):
            tokens += count_json_tokens(message["tool_calls"])
        units.append(PromptUnit(message, tokens))
    return units


def _chosen_tool(body: JsonObject, messages: list[Any]) -> ToolSpec | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    functions = [
        tool["function"]
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    ]
    if not functions:
        return None
    chosen = functions[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        chosen = next((f for f in functions if f["name"] == wanted), chosen)
    return ToolSpec(name=chosen["name"], schema=chosen.get("parameters"))


def _response_format(response_format: Any) -> tuple[Any, bool]:
    """(schema or None, is_json_object) for a `response_format` value."""
    if not isinstance(response_format, dict):
        return None, False
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return (schema if schema is not None else {"type": "object"}), False
    return None, kind == "json_object"


def _finish_reason(completion: Completion) -> str:
    if completion.is_truncated:
        return "length"
    return "tool_calls" if completion.is_tool_call else "stop"


def _completion_object(base: JsonObject, completion: Completion, usage: JsonObject) -> JsonObject:
    message: JsonObject = {"role": "assistant", "content": completion.text}
    if completion.is_tool_call:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": new_id("call_", 24),
                "type": "function",
                "function": {"name": completion.tool_name, "arguments": completion.text},
            }
        ]
    message["refusal"] = None
    message["annotations"] = []
    return {
        **base,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": system_fingerprint(base["model"]),
    }


def _stream_frames(
    base: JsonObject, completion: Completion, usage: JsonObject, include_usage: bool
) -> list[bytes]:
    header: JsonObject = {
        **base,
        "object": "chat.completion.chunk",
        "service_tier": "default",
        "system_fingerprint": system_fingerprint(base["model"]),
    }

    def chunk(delta: JsonObject, finish_reason: str | None = None) -> bytes:
        payload: JsonObject = {
            **header,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            payload["usage"] = None
        return data_frame(payload)

    fragments = group_pieces(completion)
    if completion.is_tool_call:
        call = {"index": 0, "id": new_id("call_", 24), "type": "function"}
        first: JsonObject = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call, "function": {"name": completion.tool_name, "arguments": ""}}],
            "refusal": None,
        }
        frames = [chunk(first)]
        frames.extend(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
            for fragment in fragments
        )
    else:
        frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
        frames.extend(chunk({"content": fragment}) for fragment in fragments)
    frames.append(chunk({}, _finish_reason(completion)))
    if include_usage:
        frames.append(data_frame({**header, "choices": [], "usage": usage}))
    frames.append(DONE_FRAME)
    return frames
