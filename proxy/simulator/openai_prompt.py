"""Prompt accounting shared by the OpenAI chat and Responses endpoints.

Token rules (simulator tokenizer, see `text`): text counts its tokens; an image part 85;
an audio or file part 100; any other part its compact JSON. A message adds 4 tokens of
overhead, a chat prompt 3 more for priming the reply; tool definitions count their JSON.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from .errors import Dialect, SimError, invalid_request, missing_field
from .state import JsonObject
from .text import count_json_tokens, count_tokens

MESSAGE_OVERHEAD_TOKENS: Final = 4
REPLY_PRIMING_TOKENS: Final = 3
_FIXED_PART_TOKENS: Final[dict[str, int]] = {
    "image_url": 85,
    "input_image": 85,
    "input_audio": 100,
    "file": 100,
    "input_file": 100,
}
_TEXT_PART_TYPES: Final = frozenset(("text", "input_text", "output_text", "refusal"))


def content_tokens(content: Any) -> int:
    """Tokens of a message `content`: a string, a list of parts, or None."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if kind in _TEXT_PART_TYPES:
                    text = part.get("text", part.get("refusal", ""))
                    total += count_tokens(text) if isinstance(text, str) else 0
                    continue
                if isinstance(kind, str) and kind in _FIXED_PART_TOKENS:
                    total += _FIXED_PART_TOKENS[kind]
                    continue
            total += count_json_tokens(part)
        return total
    return count_json_tokens(content)


def require_model(body: JsonObject) -> str:
    """The request's `model`; raises SimError 400 when missing or not a string."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise missing_field(Dialect.OPENAI, "model")
    return model


def optional_positive_int(body: JsonObject, *names: str) -> int | None:
    """The first of `names` present in `body`, validated as a positive integer.

    Raises SimError 400 for a value that is not an integer >= 1.
    """
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid_request(
                f"Invalid '{name}': expected an integer greater than or equal to 1.",
                param=name,
                code="integer_below_min_value",
            )
        return value
    return None


def system_fingerprint(model: str) -> str:
    """A stable `fp_…` per model, like the backend build the real API reports."""
    return f"fp_{zlib.crc32(model.encode()):08x}{zlib.adler32(model.encode()) & 0xFF:02x}"


def chat_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> JsonObject:
    """The chat-completions `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def not_found(message: str) -> SimError:
    """A 404 `invalid_request_error`."""
    return SimError(404, message)
