"""An Anthropic Messages call served by an OpenAI model: the request as a chat-completions
request, and the completion that answers it as a message. Pure functions.

Request (``chat_request``):

- ``system`` (a string or text blocks) -> a leading ``system`` message;
- ``user`` content: a string, or blocks — ``text`` -> text parts, ``image`` (base64 or
  URL source) -> ``image_url`` parts, ``tool_result`` -> ``tool`` messages placed before
  the rest of the turn (OpenAI wants them right after the assistant's tool calls);
  documents and other blocks are dropped;
- ``assistant`` content: text blocks -> ``content``, ``tool_use`` -> ``tool_calls``
  (the input as JSON arguments); thinking blocks are dropped;
- ``tools`` (client tools) -> function tools; ``tool_choice`` ``auto`` / ``any`` /
  ``tool`` / ``none`` -> ``auto`` / ``required`` / a named function / ``none``;
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``;
- ``max_tokens`` -> ``max_completion_tokens`` (what every current OpenAI model takes);
  ``temperature``, ``top_p``, ``stop_sequences`` -> ``stop``, ``metadata.user_id`` ->
  ``user``, ``stream``.

``cache_control`` markers are removed (OpenAI caches prompt prefixes by itself). Every
other field is dropped and named in ``Translated.dropped``.

Answer (``message_from_completion``): the first choice's content -> a text block, a
refusal -> a text block with stop reason ``refusal``, ``tool_calls`` -> ``tool_use``
blocks; ``finish_reason`` -> ``stop_reason``; usage with OpenAI's cached prompt tokens as
``cache_read_input_tokens`` (and out of ``input_tokens``, as Anthropic counts them).
"""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import JsonObject, int_or_none
from proxy.translate.translated import Translated, tool_arguments, tool_input

CONSUMED_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "stream"})
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def chat_request(body: JsonObject) -> Translated:
    """The chat-completions request for the Messages request ``body`` (``model`` kept)."""
    dropped: list[str] = []
    messages: list[JsonObject] = []
    system = _text(body.get("system"), dropped)
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages.extend(_chat_messages(message, dropped))
    out: JsonObject = {"model": body.get("model"), "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out["max_completion_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), int | float) and not isinstance(body.get(name), bool):
            out[name] = body[name]
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        out["stop"] = body["stop_sequences"]
    if isinstance(body.get("stream"), bool):
        out["stream"] = body["stream"]
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        out["user"] = user
    handled = _tools(body, out, dropped) | CONSUMED_FIELDS
    handled |= {"temperature", "top_p", "stop_sequences", "metadata"}
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        dropped.append("metadata")
    dropped.extend(name for name in body if name not in handled)
    return Translated(out, tuple(dict.fromkeys(dropped)))


def _text(content: Any, dropped: list[str]) -> str:
    """The text of a string or of a list of text blocks."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            _note_cache_control(block, dropped)
            texts.append(str(block.get("text") or ""))
        else:
            dropped.append(f"{_kind(block)} blocks")
    return "\n\n".join(texts)


def _kind(block: Any) -> str:
    return str(block.get("type")) if isinstance(block, dict) else type(block).__name__


def _note_cache_control(block: JsonObject, dropped: list[str]) -> None:
    if "cache_control" in block:
        dropped.append("cache_control")


def _chat_messages(message: JsonObject, dropped: list[str]) -> list[JsonObject]:
    """One Anthropic turn as chat messages: tool results first, then the turn itself."""
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [block for block in content if isinstance(block, dict)] if content else []
    for block in blocks:
        _note_cache_control(block, dropped)
    if role == "assistant":
        return [_assistant_message(blocks, dropped)]
    results = [_tool_message(b, dropped) for b in blocks if b.get("type") == "tool_result"]
    parts: list[JsonObject] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text")})
        elif kind == "image" and (image := _image_part(block.get("source"))):
            parts.append(image)
        elif kind != "tool_result":
            dropped.append(f"{kind} blocks")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_part(source: Any) -> JsonObject | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: JsonObject, dropped: list[str]) -> JsonObject:
    content = block.get("content")
    text = _text(content, dropped) if content is not None else ""
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _assistant_message(blocks: list[JsonObject], dropped: list[str]) -> JsonObject:
    texts: list[str] = []
    calls: list[JsonObject] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            function = {"name": block.get("name"), "arguments": tool_arguments(block.get("input"))}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        else:
            dropped.append(f"{kind} blocks")
    # OpenAI refuses an assistant message with neither content nor tool calls.
    out: JsonObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        out["tool_calls"] = calls
    return out


def _tools(body: JsonObject, out: JsonObject, dropped: list[str]) -> set[str]:
    tools: list[JsonObject] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            dropped.append(f"{_kind(tool)} tools")  # server tools: web search, code, …
            continue
        _note_cache_control(tool, dropped)
        function: JsonObject = {"name": tool.get("name")}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object"}
        tools.append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if tools:
        out["tools"] = tools
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind in ("auto", "none"):
            out["tool_choice"] = kind
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool" and isinstance(choice, dict):
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    return {"tools", "tool_choice"}


# -- the answer ------------------------------------------------------------------------------


def message_from_completion(completion: JsonObject) -> JsonObject:
    """The Anthropic message carrying the chat ``completion`` (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reply: JsonObject = choice.get("message") or {}
    content: list[JsonObject] = []
    stop_reason = STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn")
    text, refusal = reply.get("content"), reply.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
        stop_reason = "refusal"
    for call in reply.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": tool_input(function.get("arguments")),
                }
            )
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": message_usage(completion.get("usage")),
    }


def message_usage(usage: Any) -> JsonObject:
    """An OpenAI ``usage`` object in Anthropic's shape."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    prompt = int_or_none(usage.get("prompt_tokens")) or 0
    return {
        "input_tokens": max(prompt - (cached or 0), 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached or 0,
        "output_tokens": int_or_none(usage.get("completion_tokens")) or 0,
    }
