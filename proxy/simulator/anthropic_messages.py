"""The Anthropic Messages API: `POST /v1/messages` (plain and streamed) and
`POST /v1/messages/count_tokens`.

Token rules: text counts its tokens (simulator tokenizer); an image or document block
1000; a `tool_use` block its name plus input JSON; a `tool_result` its content; a tool
definition its JSON; each message adds 4 tokens of overhead. `count_tokens` returns the
same total that a message reports as input + cache write + cache read tokens.

Answer choice: a `tool_use` block when client tools are given, `tool_choice` is not
`none` and the last message holds no `tool_result` block (the named tool for
`{"type": "tool"}`, else the first); otherwise deterministic text. A tool input cut by
`max_tokens` is returned as `{}` in a non-streamed answer (streams carry the fragments).
`stop_sequences` are not applied. Prompt caching follows `prompt_cache`.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .completion import Completion, ToolSpec, compose, group_pieces
from .errors import Dialect, invalid_request, missing_field
from .prompt_cache import CacheUsage, PromptUnit, anthropic_cache_usage
from .reply import Call, Reply, StreamReply, event_frame, json_reply, new_id
from .state import JsonObject
from .text import count_json_tokens, count_tokens, digest_of

MESSAGE_OVERHEAD_TOKENS: Final = 4
MEDIA_BLOCK_TOKENS: Final = 1000


def create_message(call: Call) -> Reply:
    """Answer one Messages request (see module docstring)."""
    body = call.body
    model, messages = _require_model_and_messages(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise missing_field(Dialect.ANTHROPIC, "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid_request("max_tokens: Input should be a valid integer greater than 0")
    units = _prompt_units(body, messages)
    total = sum(unit.tokens for unit in units)
    cache = anthropic_cache_usage(call.state.prefixes, model, units)
    digest = digest_of(model, body.get("system"), messages, call.state.config.seed)
    completion = compose(digest, max_tokens=max_tokens, tool=_chosen_tool(body, messages))
    message = _message_object(model, completion, total, cache)
    if body.get("stream") is True:
        return StreamReply(_stream_frames(message, completion), total + completion.tokens)
    return json_reply(message, tokens=total + completion.tokens)


def count_message_tokens(call: Call) -> Reply:
    """`{"input_tokens": N}` for a Messages request body (no `max_tokens` needed)."""
    _, messages = _require_model_and_messages(call.body)
    units = _prompt_units(call.body, messages)
    return json_reply({"input_tokens": sum(unit.tokens for unit in units)})


def _require_model_and_messages(body: JsonObject) -> tuple[str, list[Any]]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise missing_field(Dialect.ANTHROPIC, "model")
    messages = body.get("messages")
    if messages is None:
        raise missing_field(Dialect.ANTHROPIC, "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise invalid_request("messages: Input should be a valid list of message objects")
    if not messages:
        raise invalid_request("messages: at least one message is required")
    return model, messages


def _block_tokens(block: Any) -> int:
    if isinstance(block, str):
        return count_tokens(block)
    if not isinstance(block, dict):
        return count_json_tokens(block)
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return count_tokens(text) if isinstance(text, str) else 0
    if kind in ("image", "document"):
        return MEDIA_BLOCK_TOKENS
    if kind == "tool_use":
        return count_tokens(str(block.get("name", ""))) + count_json_tokens(block.get("input"))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return sum(_block_tokens(part) for part in content)
        return _block_tokens(content) if content is not None else 0
    if kind == "thinking":
        return count_tokens(str(block.get("thinking", "")))
    return count_json_tokens(block)


def _unit(value: Any, tokens: int, role: str | None = None) -> PromptUnit:
    """A prompt unit whose hash ignores the `cache_control` marker itself."""
    is_breakpoint = isinstance(value, dict) and "cache_control" in value
    if is_breakpoint:
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return PromptUnit([role, value], tokens, is_breakpoint)


def _prompt_units(body: JsonObject, messages: list[JsonObject]) -> list[PromptUnit]:
    units: list[PromptUnit] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        units.extend(_unit(tool, count_json_tokens(tool), "tool") for tool in tools)
    system = body.get("system")
    if isinstance(system, str):
        units.append(_unit(system, count_tokens(system), "system"))
    elif isinstance(system, list):
        units.extend(_unit(block, _block_tokens(block), "system") for block in system)
    elif system is not None:
        raise invalid_request("system: Input should be a valid string or list of text blocks")
    for message in messages:
        role = str(message.get("role"))
        content = message.get("content")
        blocks = content if isinstance(content, list) and content else [content or ""]
        for index, block in enumerate(blocks):
            overhead = MESSAGE_OVERHEAD_TOKENS if index == 0 else 0
            units.append(_unit(block, overhead + _block_tokens(block), role))
    return units


def _chosen_tool(body: JsonObject, messages: list[JsonObject]) -> ToolSpec | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    content = messages[-1].get("content")
    if isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    ):
        return None
    client_tools = [
        tool
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") in (None, "custom")
        and isinstance(tool.get("name"), str)
    ]
    if not client_tools:
        return None
    chosen = client_tools[0]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        chosen = next((t for t in client_tools if t["name"] == choice.get("name")), chosen)
    return ToolSpec(name=chosen["name"], schema=chosen.get("input_schema"))


def _content_block(completion: Completion) -> JsonObject:
    if not completion.is_tool_call:
        return {"type": "text", "text": completion.text}
    try:
        arguments = orjson.loads(completion.text)
    except orjson.JSONDecodeError:
        arguments = {}
    return {
        "type": "tool_use",
        "id": new_id("toolu_01", 22),
        "name": completion.tool_name,
        "input": arguments,
    }


def _message_object(
    model: str, completion: Completion, total_input: int, cache: CacheUsage
) -> JsonObject:
    if completion.is_truncated:
        stop_reason = "max_tokens"
    else:
        stop_reason = "tool_use" if completion.is_tool_call else "end_turn"
    return {
        "id": new_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_content_block(completion)],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": total_input - cache.read_tokens - cache.created_tokens,
            "cache_creation_input_tokens": cache.created_tokens,
            "cache_read_input_tokens": cache.read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.created_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": completion.tokens,
            "service_tier": "standard",
        },
    }


def _stream_frames(message: JsonObject, completion: Completion) -> list[bytes]:
    usage = message["usage"]
    block = message["content"][0]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    frames = [event_frame("message_start", {"type": "message_start", "message": start})]
    if completion.is_tool_call:
        opening = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [
            {"type": "input_json_delta", "partial_json": fragment}
            for fragment in group_pieces(completion)
        ]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": fragment} for fragment in group_pieces(completion)]
    frames.append(
        event_frame(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": opening},
        )
    )
    frames.append(event_frame("ping", {"type": "ping"}))
    frames.extend(
        event_frame("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
        for d in deltas
    )
    frames.append(event_frame("content_block_stop", {"type": "content_block_stop", "index": 0}))
    final_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    frames.append(
        event_frame(
            "message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}
        )
    )
    frames.append(event_frame("message_stop", {"type": "message_stop"}))
    return frames
