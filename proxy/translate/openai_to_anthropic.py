"""An OpenAI chat-completions call served by an Anthropic model: the request as a Messages
request, and the message that answers it as a chat completion. Pure functions.

Request (``messages_request``):

- ``system`` / ``developer`` messages -> ``system`` (their texts, joined by a blank line);
- ``user`` content: a string, or parts — ``text`` -> text blocks, ``image_url`` -> image
  blocks (a ``data:`` URL as a base64 source, any other URL as a URL source); other parts
  (audio, files) are dropped;
- ``assistant`` ``content`` -> text blocks, ``tool_calls`` -> ``tool_use`` blocks;
- ``tool`` messages -> ``tool_result`` blocks, first in the next user turn; consecutive
  messages of one role are merged into one turn (Anthropic wants every result of a tool
  turn in the one user message after it);
- ``tools`` (function tools) -> Anthropic tools; ``tool_choice`` ``auto`` / ``none`` /
  ``required`` / a named function -> ``auto`` / ``none`` / ``any`` / ``tool``;
  ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``;
- ``max_completion_tokens`` / ``max_tokens`` -> ``max_tokens`` (Anthropic requires one: the
  caller's default when neither is set); ``temperature`` (capped at Anthropic's 1.0),
  ``top_p``, ``stop`` -> ``stop_sequences``, ``user`` -> ``metadata.user_id``, ``stream``.

Every other field is dropped and named in ``Translated.dropped`` (Anthropic refuses fields
it does not know, so nothing unknown can pass through).

Answer (``completion_from_message``): text blocks -> ``content``; ``tool_use`` blocks ->
``tool_calls`` (the input as JSON arguments); thinking blocks are dropped; ``stop_reason``
-> ``finish_reason``; usage with cache reads and writes inside ``prompt_tokens`` (OpenAI
counts every prompt token there) and the reads as ``cached_tokens``.
"""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import JsonObject, int_or_none
from proxy.translate.translated import Translated, tool_arguments, tool_input

ANTHROPIC_MAX_TEMPERATURE = 1.0
SYSTEM_ROLES = frozenset({"system", "developer"})
# Read elsewhere (the gateway always asks for stream usage), so not "dropped".
CONSUMED_FIELDS = frozenset({"model", "messages", "stream_options"})
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def messages_request(body: JsonObject, default_max_tokens: int) -> Translated:
    """The Messages request for the chat-completions request ``body`` (``model`` kept)."""
    dropped: list[str] = []
    system, turns = _turns(body.get("messages") or [], dropped)
    out: JsonObject = {"model": body.get("model"), "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    max_tokens = int_or_none(body.get("max_completion_tokens")) or int_or_none(
        body.get("max_tokens")
    )
    out["max_tokens"] = max_tokens or default_max_tokens
    handled = {"max_completion_tokens", "max_tokens"}
    handled |= _sampling(body, out, dropped)
    handled |= _tools(body, out, dropped)
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("n") in (None, 1):
        handled.add("n")
    handled |= {"stream", "user"} | CONSUMED_FIELDS
    dropped.extend(name for name in body if name not in handled)
    return Translated(out, tuple(dict.fromkeys(dropped)))


def _turns(messages: list[Any], dropped: list[str]) -> tuple[list[str], list[JsonObject]]:
    """(system texts, user/assistant turns with same-role neighbours merged)."""
    system: list[str] = []
    turns: list[JsonObject] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in SYSTEM_ROLES:
            system.extend(_texts(message.get("content")))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), dropped)
        elif role == "assistant":
            blocks = _assistant_blocks(message, dropped)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:  # "function": the deprecated single-function form
            dropped.append(f"{role} messages")
            continue
        if "name" in message:
            dropped.append("messages[].name")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # results first: Anthropic reads them as answers to the last turn
        turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    return system, turns


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        return []
    return [
        str(part.get("text") or part.get("refusal") or "")
        for part in content
        if isinstance(part, dict) and part.get("type") in ("text", "refusal")
    ]


def _user_blocks(content: Any, dropped: list[str]) -> list[JsonObject]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[JsonObject] = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url" and (image := _image_block(part.get("image_url"))):
            blocks.append(image)
        else:
            dropped.append(f"content part {kind}")
    return blocks


def _image_block(image_url: Any) -> JsonObject | None:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        header, _, data = url[len("data:") :].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            return None
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: JsonObject, dropped: list[str]) -> list[JsonObject]:
    blocks: list[JsonObject] = [
        {"type": "text", "text": text} for text in _texts(message.get("content")) if text
    ]
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            dropped.append("tool_calls of another type")
            continue
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
    if message.get("function_call") is not None:
        dropped.append("function_call")
    return blocks


def _tool_result(message: JsonObject) -> JsonObject:
    return {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id"),
        "content": "\n".join(_texts(message.get("content"))),
    }


def _sampling(body: JsonObject, out: JsonObject, dropped: list[str]) -> set[str]:
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(float(temperature), ANTHROPIC_MAX_TEMPERATURE)
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool):
        if "temperature" in out:  # current Claude models refuse both at once
            dropped.append("top_p")
        else:
            out["top_p"] = top_p
    stop = body.get("stop")
    sequences = [stop] if isinstance(stop, str) else stop
    if isinstance(sequences, list) and sequences:
        out["stop_sequences"] = [s for s in sequences if isinstance(s, str)]
    return {"temperature", "top_p", "stop"}


def _tools(body: JsonObject, out: JsonObject, dropped: list[str]) -> set[str]:
    tools: list[JsonObject] = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            dropped.append("tools of another type")
            continue
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        converted: JsonObject = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        converted["input_schema"] = function.get("parameters") or {
            "type": "object",
            "properties": {},
        }
        tools.append(converted)
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            out["tool_choice"] = choice
    return {"tools", "tool_choice", "parallel_tool_calls"}


def _tool_choice(choice: Any) -> JsonObject | None:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    return None


# -- the answer ------------------------------------------------------------------------------


def completion_from_message(message: JsonObject, created: int) -> JsonObject:
    """The chat completion carrying the Anthropic ``message`` (``created``: epoch seconds)."""
    texts: list[str] = []
    calls: list[JsonObject] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            function = {"name": block.get("name"), "arguments": tool_arguments(block.get("input"))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    reply: JsonObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    stop_reason = message.get("stop_reason")
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(str(stop_reason), "stop"),
            }
        ],
        "usage": completion_usage(message.get("usage")),
    }


def completion_usage(usage: Any) -> JsonObject:
    """An Anthropic ``usage`` object in OpenAI's shape."""
    usage = usage if isinstance(usage, dict) else {}
    read = int_or_none(usage.get("cache_read_input_tokens")) or 0
    written = int_or_none(usage.get("cache_creation_input_tokens")) or 0
    prompt = (int_or_none(usage.get("input_tokens")) or 0) + read + written
    completion = int_or_none(usage.get("output_tokens")) or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
