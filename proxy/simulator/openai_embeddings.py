"""`POST /v1/embeddings`: deterministic unit vectors.

Each input (a string, or a token array) gets a vector that is a pure function of
(model, input, seed), normalised to length 1 and rounded to float32. `dimensions` is
honoured; the default is 3072 for `text-embedding-3-large` and 1536 otherwise.
`encoding_format` is "float" (JSON numbers) or "base64" (little-endian float32 bytes,
what the openai SDK asks for by default); both carry the same float32 values.
Usage counts the tokens of the strings (simulator tokenizer) or the token arrays' lengths.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from typing import Any, Final

from .errors import Dialect, invalid_request, missing_field
from .openai_prompt import optional_positive_int, require_model
from .reply import Call, Reply, json_reply
from .text import count_tokens, digest_of, rng_for

LARGE_MODEL_DIMENSIONS: Final = 3072
DEFAULT_DIMENSIONS: Final = 1536
MAX_DIMENSIONS: Final = 8192


def create_embeddings(call: Call) -> Reply:
    """Answer one embeddings request (see module docstring)."""
    body = call.body
    model = require_model(body)
    inputs = _inputs(body.get("input"))
    default = LARGE_MODEL_DIMENSIONS if model.endswith("-large") else DEFAULT_DIMENSIONS
    dimensions = optional_positive_int(body, "dimensions") or default
    if dimensions > MAX_DIMENSIONS:
        raise invalid_request(
            f"Invalid 'dimensions': at most {MAX_DIMENSIONS}.", param="dimensions"
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid_request(
            "Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format"
        )
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, value in enumerate(inputs):
        tokens += count_tokens(value) if isinstance(value, str) else len(value)
        vector = _vector(digest_of(model, value, call.state.config.seed), dimensions)
        embedding: Any = vector.tolist()
        if encoding == "base64":
            if sys.byteorder == "big":
                vector.byteswap()
            embedding = base64.b64encode(vector.tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return json_reply(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        tokens=tokens,
    )


def _inputs(raw: Any) -> list[str | list[int]]:
    """The request's inputs as a list; raises SimError 400 when malformed or empty."""
    if raw is None:
        raise missing_field(Dialect.OPENAI, "input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_int(v) for v in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        items = []
    valid = all(
        (isinstance(v, str) and v) or (isinstance(v, list) and v and all(_is_int(t) for t in v))
        for v in items
    )
    if not items or not valid:
        raise invalid_request(
            "'input' must be a non-empty string, a list of non-empty strings, "
            "or a list of token arrays.",
            param="input",
        )
    return items


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _vector(digest: bytes, dimensions: int) -> array[float]:
    rng = rng_for(digest, "embedding")
    raw = [rng.random() - 0.5 for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return array("f", [x / norm for x in raw])
