"""The simulated model: what an answer says, as a pure function of a request digest.

`compose` returns either assistant text or a tool call's JSON arguments, truncated to the
token cap; its `tokens` always equal the tokens of the returned `text` (for a tool call:
of the arguments JSON), which is what the endpoints report as output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from .schema_values import generate_value
from .text import generate_pieces, generate_text, rng_for, split_pieces

EMPTY_OBJECT_SCHEMA: Final = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """The tool the simulated model decided to call, and its parameters' JSON schema."""

    name: str
    schema: Any


@dataclass(frozen=True, slots=True)
class Completion:
    """One answer. `pieces` are one-token fragments with `"".join(pieces) == text`."""

    text: str
    pieces: list[str]
    is_truncated: bool
    tool_name: str | None = None

    @property
    def tokens(self) -> int:
        """Output tokens of this answer."""
        return len(self.pieces)

    @property
    def is_tool_call(self) -> bool:
        """Whether the answer is a tool call (then `text` is the arguments JSON)."""
        return self.tool_name is not None


def compose(
    digest: bytes,
    *,
    max_tokens: int | None,
    tool: ToolSpec | None = None,
    schema: Any = None,
    is_json_object: bool = False,
) -> Completion:
    """The answer for `digest`: a tool call when `tool` is given, else a JSON document
    valid for `schema` (or any JSON object when `is_json_object`), else plain text;
    cut to `max_tokens` tokens when that is smaller (then `is_truncated`)."""
    text: str | None = None
    if tool is not None:
        tool_schema = tool.schema if isinstance(tool.schema, dict) else EMPTY_OBJECT_SCHEMA
        value = generate_value(tool_schema, rng_for(digest, "tool:" + tool.name))
        text = orjson.dumps(value if isinstance(value, dict) else {"value": value}).decode()
    elif schema is not None:
        text = orjson.dumps(generate_value(schema, rng_for(digest, "schema"))).decode()
    elif is_json_object:
        text = orjson.dumps({"answer": generate_text(digest)}).decode()
    # Plain text comes already cut into pieces; JSON is cut here.
    pieces = generate_pieces(digest) if text is None else split_pieces(text)
    is_truncated = max_tokens is not None and len(pieces) > max_tokens
    if is_truncated:
        pieces = pieces[:max_tokens]
    if text is None or is_truncated:
        text = "".join(pieces)
    return Completion(
        text=text,
        pieces=pieces,
        is_truncated=is_truncated,
        tool_name=tool.name if tool is not None else None,
    )


def broken_json(completion: Completion) -> Completion:
    """The same answer with its last character cut off: no longer parseable JSON."""
    pieces = split_pieces(completion.text[:-1])
    return Completion("".join(pieces), pieces, completion.is_truncated, completion.tool_name)


def group_pieces(completion: Completion) -> list[str]:
    """Stream fragments: one word per fragment for text, up to three tokens for JSON."""
    size = 3 if completion.is_tool_call or completion.text.startswith(("{", "[")) else 1
    pieces = completion.pieces
    if size == 1:
        return pieces
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]
