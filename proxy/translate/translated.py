"""What translating a request gives: the body for the other provider, and what it lost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.endpoints.base import JsonObject


@dataclass(frozen=True, slots=True)
class Translated:
    body: JsonObject
    dropped: tuple[str, ...] = ()  # the caller's fields the other dialect has no place for


def tool_input(arguments: Any) -> JsonObject:
    """OpenAI tool-call ``arguments`` (a JSON string) as the object Anthropic's ``input``
    must be; arguments that are not a JSON object are wrapped as ``{"arguments": …}``."""
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def tool_arguments(tool_input: Any) -> str:
    """Anthropic's tool ``input`` as OpenAI's JSON ``arguments`` string."""
    return orjson.dumps(tool_input or {}).decode()
