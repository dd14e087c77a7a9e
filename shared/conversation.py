"""A record's bodies as a conversation: chat bubbles for the console to draw.

Both dialects are read: OpenAI chat completions (``messages`` / ``choices``), OpenAI
responses (``instructions`` + ``input`` / ``output``), embeddings, and Anthropic
messages (``system`` + ``messages`` / ``content``). Stream answers are stored
assembled, so they read like whole ones. Tool calls and tool results are bubbles of
their own kinds, images and files a line saying what was sent.

Everything here is pure and never raises on odd input: a body that is not JSON, or
not of a known shape, becomes one ``raw`` part holding its text. The text is what
the caller sent or the provider answered, untrusted: whoever draws it must draw it
as text, never as HTML or markdown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TEXT = "text"
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"
THINKING = "thinking"
ATTACHMENT = "attachment"
REFUSAL = "refusal"
ERROR = "error"
RAW = "raw"


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a bubble. ``name``: a tool's name; ``call_id`` ties calls to results."""

    kind: str
    text: str
    name: str | None = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Bubble:
    """One turn: ``role`` is system, user, assistant or tool; ``is_answer``: from the answer."""

    role: str
    parts: tuple[Part, ...]
    is_answer: bool = False

    @property
    def text(self) -> str:
        return "\n".join(part.text for part in self.parts)


@dataclass(frozen=True, slots=True)
class Conversation:
    """The prompt's bubbles, then the answer's."""

    prompt: list[Bubble] = field(default_factory=list)
    answer: list[Bubble] = field(default_factory=list)
    system_prompt: str | None = None  # as sent: what a replay may edit

    @property
    def bubbles(self) -> list[Bubble]:
        return [*self.prompt, *self.answer]

    def answer_text(self) -> str:
        """The answer's text and tool calls, for side-by-side comparison."""
        return "\n\n".join(bubble.text for bubble in self.answer)

    def preview(self, length: int = 160) -> str:
        """The last thing the user said (else the first bubble), on one line."""
        users = [bubble for bubble in self.prompt if bubble.role == "user"]
        chosen = users[-1] if users else (self.bubbles[0] if self.bubbles else None)
        text = " ".join(chosen.text.split()) if chosen else ""
        return text if len(text) <= length else text[: length - 1] + "…"


def read_conversation(
    endpoint: str, request_body: str | None, response_body: str | None
) -> Conversation:
    """The conversation of one record, whatever its endpoint (see the module docstring)."""
    request = _load(request_body)
    answer = _load(response_body)
    reader = _READERS.get(endpoint, _GUESS)
    prompt, system = reader.prompt(request, request_body) if request is not None else ([], None)
    if request is None and request_body:
        prompt = [Bubble("user", (Part(RAW, request_body),))]
    replies: list[Bubble] = []
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        replies = [_error_bubble(answer["error"])]
    elif answer is not None:
        replies = reader.answer(answer)
    elif response_body:
        replies = [Bubble("assistant", (Part(RAW, response_body),), is_answer=True)]
    return Conversation(prompt, replies, system)


def system_prompt_of(endpoint: str, request_body: str | None) -> str | None:
    return read_conversation(endpoint, request_body, None).system_prompt


# -- OpenAI chat completions ----------------------------------------------------------


def _chat_prompt(body: Any, _raw: str | None) -> tuple[list[Bubble], str | None]:
    bubbles: list[Bubble] = []
    system: str | None = None
    for message in _list(_get(body, "messages")):
        role = str(_get(message, "role") or "user")
        parts = _openai_content(_get(message, "content"))
        if role == "tool":
            parts = [Part(TOOL_RESULT, _join(parts), call_id=_str(_get(message, "tool_call_id")))]
        parts += _openai_tool_calls(message)
        if role in ("system", "developer"):
            system = _join(parts) if system is None else system
            role = "system"
        bubbles.append(Bubble(role, tuple(parts)))
    return bubbles, system


def _chat_answer(body: Any) -> list[Bubble]:
    bubbles = []
    for choice in _list(_get(body, "choices")):
        message = _get(choice, "message")
        parts = _openai_content(_get(message, "content"))
        refusal = _get(message, "refusal")
        if isinstance(refusal, str) and refusal:
            parts.append(Part(REFUSAL, refusal))
        parts += _openai_tool_calls(message)
        bubbles.append(Bubble("assistant", tuple(parts), is_answer=True))
    return bubbles


def _openai_content(content: Any) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Part(TEXT, content)]
    parts = []
    for block in _list(content):
        kind = _get(block, "type")
        if kind in ("text", "input_text", "output_text"):
            parts.append(Part(TEXT, _str(_get(block, "text")) or ""))
        elif kind == "refusal":
            parts.append(Part(REFUSAL, _str(_get(block, "refusal")) or ""))
        else:
            parts.append(Part(ATTACHMENT, f"[{kind or 'unknown'} content]"))
    return parts


def _openai_tool_calls(message: Any) -> list[Part]:
    parts = []
    for call in _list(_get(message, "tool_calls")):
        function = _get(call, "function")
        parts.append(
            Part(
                TOOL_CALL,
                _str(_get(function, "arguments")) or "",
                name=_str(_get(function, "name")),
                call_id=_str(_get(call, "id")),
            )
        )
    legacy = _get(message, "function_call")
    if isinstance(legacy, dict):
        parts.append(
            Part(TOOL_CALL, _str(legacy.get("arguments")) or "", name=_str(legacy.get("name")))
        )
    return parts


# -- OpenAI responses -----------------------------------------------------------------


def _responses_prompt(body: Any, _raw: str | None) -> tuple[list[Bubble], str | None]:
    system = _str(_get(body, "instructions"))
    bubbles = [Bubble("system", (Part(TEXT, system),))] if system else []
    items = _get(body, "input")
    if isinstance(items, str):
        return [*bubbles, Bubble("user", (Part(TEXT, items),))], system
    for item in _list(items):
        bubble = _responses_item(item, is_answer=False)
        if bubble is not None:
            bubbles.append(bubble)
    return bubbles, system


def _responses_answer(body: Any) -> list[Bubble]:
    bubbles = []
    for item in _list(_get(body, "output")):
        bubble = _responses_item(item, is_answer=True)
        if bubble is not None:
            bubbles.append(bubble)
    return bubbles


def _responses_item(item: Any, *, is_answer: bool) -> Bubble | None:
    kind = _get(item, "type") or "message"
    if kind == "message":
        role = str(_get(item, "role") or "user")
        role = "system" if role == "developer" else role
        return Bubble(role, tuple(_openai_content(_get(item, "content"))), is_answer)
    if kind == "function_call":
        part = Part(
            TOOL_CALL,
            _str(_get(item, "arguments")) or "",
            name=_str(_get(item, "name")),
            call_id=_str(_get(item, "call_id")),
        )
        return Bubble("assistant", (part,), is_answer)
    if kind == "function_call_output":
        output = _get(item, "output")
        text = output if isinstance(output, str) else _json(output)
        return Bubble(
            "tool", (Part(TOOL_RESULT, text, call_id=_str(_get(item, "call_id"))),), is_answer
        )
    if kind == "reasoning":
        summary = [_str(_get(entry, "text")) or "" for entry in _list(_get(item, "summary"))]
        return Bubble("assistant", (Part(THINKING, "\n".join(summary)),), is_answer)
    return Bubble("assistant", (Part(ATTACHMENT, f"[{kind}]"),), is_answer)


# -- embeddings -----------------------------------------------------------------------


def _embeddings_prompt(body: Any, _raw: str | None) -> tuple[list[Bubble], str | None]:
    given = _get(body, "input")
    texts = (
        [given]
        if isinstance(given, str)
        else [_str(entry) or _json(entry) for entry in _list(given)]
    )
    return [Bubble("user", tuple(Part(TEXT, text) for text in texts))], None


def _embeddings_answer(body: Any) -> list[Bubble]:
    vectors = _list(_get(body, "data"))
    sizes = {len(_list(_get(vector, "embedding"))) for vector in vectors}
    size = f" of {sizes.pop()} dimensions" if len(sizes) == 1 else ""
    return [Bubble("assistant", (Part(TEXT, f"{len(vectors)} embedding(s){size}"),), True)]


# -- Anthropic messages ---------------------------------------------------------------


def _messages_prompt(body: Any, _raw: str | None) -> tuple[list[Bubble], str | None]:
    bubbles = []
    given = _get(body, "system")
    system = given if isinstance(given, str) else None
    if isinstance(given, list):
        system = _join(_anthropic_blocks(given))
    if system:
        bubbles.append(Bubble("system", (Part(TEXT, system),)))
    for message in _list(_get(body, "messages")):
        role = str(_get(message, "role") or "user")
        parts = _anthropic_blocks(_get(message, "content"))
        if parts and all(part.kind == TOOL_RESULT for part in parts):
            role = "tool"
        bubbles.append(Bubble(role, tuple(parts)))
    return bubbles, system


def _messages_answer(body: Any) -> list[Bubble]:
    return [Bubble("assistant", tuple(_anthropic_blocks(_get(body, "content"))), is_answer=True)]


def _anthropic_blocks(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [Part(TEXT, content)]
    parts = []
    for block in _list(content):
        kind = _get(block, "type")
        if kind == "text":
            parts.append(Part(TEXT, _str(_get(block, "text")) or ""))
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(
                Part(
                    TOOL_CALL,
                    _json(_get(block, "input")),
                    name=_str(_get(block, "name")),
                    call_id=_str(_get(block, "id")),
                )
            )
        elif kind == "tool_result":
            inner = _get(block, "content")
            text = inner if isinstance(inner, str) else _join(_anthropic_blocks(inner))
            if _get(block, "is_error") is True:
                text = f"[error] {text}"
            parts.append(Part(TOOL_RESULT, text, call_id=_str(_get(block, "tool_use_id"))))
        elif kind == "thinking":
            parts.append(Part(THINKING, _str(_get(block, "thinking")) or ""))
        elif kind == "redacted_thinking":
            parts.append(Part(THINKING, "[redacted thinking]"))
        else:
            parts.append(Part(ATTACHMENT, f"[{kind or 'unknown'} content]"))
    return parts


# -- shared ---------------------------------------------------------------------------


PromptReader = Callable[[Any, str | None], tuple[list[Bubble], str | None]]
AnswerReader = Callable[[Any], list[Bubble]]


@dataclass(frozen=True, slots=True)
class _Reader:
    prompt: PromptReader  # (body, its text) -> (bubbles, system prompt)
    answer: AnswerReader


def _guess_prompt(body: Any, raw: str | None) -> tuple[list[Bubble], str | None]:
    """An endpoint this module does not know: guess its shape from the body's keys."""
    if _get(body, "messages") is not None:
        if _get(body, "system") is not None:
            return _messages_prompt(body, raw)
        return _chat_prompt(body, raw)
    if _get(body, "input") is not None:
        return _responses_prompt(body, raw)
    return [Bubble("user", (Part(RAW, raw or _json(body)),))], None


def _guess_answer(body: Any) -> list[Bubble]:
    if _get(body, "choices") is not None:
        return _chat_answer(body)
    if _get(body, "output") is not None:
        return _responses_answer(body)
    if isinstance(_get(body, "content"), list):
        return _messages_answer(body)
    return [Bubble("assistant", (Part(RAW, _json(body)),), is_answer=True)]


def _no_answer(_body: Any) -> list[Bubble]:
    return []


_READERS: dict[str, _Reader] = {
    "chat.completions": _Reader(_chat_prompt, _chat_answer),
    "responses": _Reader(_responses_prompt, _responses_answer),
    "embeddings": _Reader(_embeddings_prompt, _embeddings_answer),
    "messages": _Reader(_messages_prompt, _messages_answer),
    "messages.count_tokens": _Reader(_messages_prompt, _no_answer),
}
_GUESS = _Reader(_guess_prompt, _guess_answer)


def _error_bubble(error: dict[str, Any]) -> Bubble:
    message = _str(error.get("message")) or _json(error)
    kind = _str(error.get("type")) or _str(error.get("code"))
    text = f"{kind}: {message}" if kind else message
    return Bubble("assistant", (Part(ERROR, text),), is_answer=True)


def _load(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:  # not JSON (a refused body, a truncated one): shown raw
        return None


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _join(parts: list[Part]) -> str:
    return "\n".join(part.text for part in parts)
