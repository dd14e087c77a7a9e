"""The OpenAI Responses API: create (plain and streamed), retrieve, delete, cancel.

Answer choice mirrors chat completions: a `function_call` item when `tools` holds
`type: "function"` tools, `tool_choice` is not "none" and the last input item is not a
`function_call_output`; else JSON for `text.format` `json_schema` / `json_object`; else
text. Responses are kept (unless `store: false`) in the app's bounded store. A follow-up
with `previous_response_id` inherits the previous input and output as input tokens, which
count as cached (rounded down to 128) once they reach 1024. Every response completes
immediately, `background` included, so cancel returns the stored response unchanged.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .completion import Completion, ToolSpec, compose, group_pieces
from .errors import Dialect, SimError, invalid_request, missing_field
from .openai_prompt import (
    MESSAGE_OVERHEAD_TOKENS,
    content_tokens,
    not_found,
    optional_positive_int,
    require_model,
)
from .prompt_cache import (
    MIN_CACHEABLE_TOKENS,
    OPENAI_CACHE_INCREMENT,
    PromptUnit,
    openai_cached_tokens,
)
from .reply import Call, Reply, StreamReply, event_frame, json_reply, new_id
from .state import JsonObject, StoredResponse
from .text import count_json_tokens, count_tokens, digest_of


def create_response(call: Call) -> Reply:
    """Answer `POST /v1/responses` (see module docstring)."""
    body, state = call.body, call.state
    model = require_model(body)
    previous = _previous(call)
    if body.get("input") is None and previous is None:
        raise missing_field(Dialect.OPENAI, "input")
    items = _input_items(body.get("input"))
    instructions = body.get("instructions")
    units = _prompt_units(instructions, body.get("tools"), items)
    input_tokens = sum(unit.tokens for unit in units)
    if previous is not None:
        input_tokens += previous.context_tokens
        inherited = previous.context_tokens - previous.context_tokens % OPENAI_CACHE_INCREMENT
        cached = inherited if inherited >= MIN_CACHEABLE_TOKENS else 0
    else:
        cached = openai_cached_tokens(state.prefixes, "responses\0" + model, units, input_tokens)
    previous_digest = previous.digest.hex() if previous is not None else None
    digest = digest_of(model, instructions, items, previous_digest, state.config.seed)
    schema, is_json_object = _text_format(body.get("text"))
    completion = compose(
        digest,
        max_tokens=optional_positive_int(body, "max_output_tokens"),
        tool=_chosen_tool(body, items),
        schema=schema,
        is_json_object=is_json_object,
    )
    response = _response_object(body, model, completion, input_tokens, cached)
    total = input_tokens + completion.tokens
    if body.get("store") is not False:
        stored_items = tuple(_listed_item(item) for item in items)
        state.responses.put(response["id"], StoredResponse(response, digest, total, stored_items))
    if body.get("stream") is True:
        return StreamReply(_stream_frames(response, completion), total)
    return json_reply(response, tokens=total)


def retrieve_response(call: Call) -> Reply:
    """`GET /v1/responses/{response_id}`; 404 when unknown."""
    return json_reply(_stored(call).body)


def cancel_response(call: Call) -> Reply:
    """`POST /v1/responses/{response_id}/cancel`: the stored response, unchanged."""
    return json_reply(_stored(call).body)


def list_input_items(call: Call) -> Reply:
    """`GET /v1/responses/{response_id}/input_items`: the items the response was given,
    newest first unless ``order=asc``, paged with ``limit`` (1-100, default 20) and
    ``after``; 404 when unknown."""
    stored = _stored(call)
    query = call.query
    items = list(stored.input_items)
    if query.get("order", "desc") != "asc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = min(max(int(query.get("limit", "20")), 1), 100)
    except ValueError:
        raise invalid_request("Invalid 'limit': expected an integer.", param="limit") from None
    page = items[:limit]
    return json_reply(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _listed_item(item: JsonObject) -> JsonObject:
    """An input item as the API lists it: with an id, a type and content parts."""
    listed = dict(item)
    listed.setdefault("type", "message")
    listed.setdefault("id", _hex_id("msg" if listed["type"] == "message" else "item"))
    content = listed.get("content")
    if listed["type"] == "message" and isinstance(content, str):
        listed["content"] = [{"type": "input_text", "text": content}]
    return listed


def delete_response(call: Call) -> Reply:
    """`DELETE /v1/responses/{response_id}`; 404 when unknown."""
    response_id = call.params["response_id"]
    if call.state.responses.pop(response_id) is None:
        raise not_found(f"Response with id '{response_id}' not found.")
    return json_reply({"id": response_id, "object": "response", "deleted": True})


def _stored(call: Call) -> StoredResponse:
    response_id = call.params["response_id"]
    stored = call.state.responses.get(response_id)
    if stored is None:
        raise not_found(f"Response with id '{response_id}' not found.")
    return stored


def _previous(call: Call) -> StoredResponse | None:
    previous_id = call.body.get("previous_response_id")
    if previous_id is None:
        return None
    stored = call.state.responses.get(previous_id) if isinstance(previous_id, str) else None
    if stored is None:
        raise SimError(
            404,
            f"Previous response with id '{previous_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored


def _input_items(raw: Any) -> list[JsonObject]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if isinstance(raw, list) and all(isinstance(item, dict) for item in raw):
        return raw
    raise invalid_request(
        "Invalid 'input': expected a string or an array of input items.",
        param="input",
        code="invalid_type",
    )


def _item_tokens(item: JsonObject) -> int:
    kind = item.get("type", "message")
    if kind == "message" or "role" in item:
        return MESSAGE_OVERHEAD_TOKENS + content_tokens(item.get("content"))
    if kind == "function_call_output":
        return MESSAGE_OVERHEAD_TOKENS + content_tokens(item.get("output"))
    if kind == "function_call":
        name, arguments = item.get("name"), item.get("arguments")
        return MESSAGE_OVERHEAD_TOKENS + content_tokens(name) + content_tokens(arguments)
    return count_json_tokens(item)


def _prompt_units(instructions: Any, tools: Any, items: list[JsonObject]) -> list[PromptUnit]:
    units: list[PromptUnit] = []
    if isinstance(instructions, str):
        units.append(
            PromptUnit(
                ["instructions", instructions], MESSAGE_OVERHEAD_TOKENS + count_tokens(instructions)
            )
        )
    if tools:
        units.append(PromptUnit(tools, count_json_tokens(tools)))
    units.extend(PromptUnit(item, _item_tokens(item)) for item in items)
    return units


def _chosen_tool(body: JsonObject, items: list[JsonObject]) -> ToolSpec | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    if items and items[-1].get("type") == "function_call_output":
        return None
    functions = [
        tool
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("name"), str)
    ]
    if not functions:
        return None
    chosen = functions[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        chosen = next((f for f in functions if f["name"] == choice.get("name")), chosen)
    return ToolSpec(name=chosen["name"], schema=chosen.get("parameters"))


def _text_format(text: Any) -> tuple[Any, bool]:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None, False
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return (schema if schema is not None else {"type": "object"}), False
    return None, fmt.get("type") == "json_object"


def _hex_id(prefix: str) -> str:
    return prefix + random.randbytes(25).hex()


def _output_item(completion: Completion, status: str) -> JsonObject:
    if completion.is_tool_call:
        return {
            "id": _hex_id("fc_"),
            "type": "function_call",
            "status": status,
            "arguments": completion.text,
            "call_id": new_id("call_", 24),
            "name": completion.tool_name,
        }
    return {
        "id": _hex_id("msg_"),
        "type": "message",
        "status": status,
        "content": [
            {"type": "output_text", "annotations": [], "logprobs": [], "text": completion.text}
        ],
        "role": "assistant",
    }


def _response_object(
    body: JsonObject, model: str, completion: Completion, input_tokens: int, cached: int
) -> JsonObject:
    status = "incomplete" if completion.is_truncated else "completed"
    return {
        "id": _hex_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": body.get("background") is True,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if completion.is_truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [_output_item(completion, status)],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + completion.tokens,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _stream_frames(response: JsonObject, completion: Completion) -> list[bytes]:
    frames: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        frames.append(event_frame(kind, {"type": kind, "sequence_number": len(frames), **fields}))

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    item = response["output"][0]
    where: JsonObject = {"item_id": item["id"], "output_index": 0}
    if completion.is_tool_call:
        emit(
            "response.output_item.added",
            output_index=0,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        for fragment in group_pieces(completion):
            emit("response.function_call_arguments.delta", **where, delta=fragment)
        emit(
            "response.function_call_arguments.done",
            **where,
            name=item["name"],
            arguments=item["arguments"],
        )
    else:
        part = item["content"][0]
        emit(
            "response.output_item.added",
            output_index=0,
            item={**item, "content": [], "status": "in_progress"},
        )
        emit("response.content_part.added", **where, content_index=0, part={**part, "text": ""})
        for fragment in group_pieces(completion):
            emit(
                "response.output_text.delta", **where, content_index=0, delta=fragment, logprobs=[]
            )
        emit("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[])
        emit("response.content_part.done", **where, content_index=0, part=part)
    emit("response.output_item.done", output_index=0, item=item)
    final = "response.incomplete" if completion.is_truncated else "response.completed"
    emit(final, response=response)
    return frames
