"""``POST /v1/embeddings``: vectors for a string, strings or token arrays.

Priced per input token (no completion). Screening reads the input strings. The
request log keeps the input (redacted like any prompt) but not the vectors: the
recorded answer says how many vectors of how many dimensions came back.
Embeddings never stream.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from proxy.endpoints.base import JsonObject, RequestFacts, StreamReader, int_or_none
from proxy.endpoints.openai_chat import read_openai_usage, require_model
from proxy.errors import InvalidRequest
from shared.pricing import Usage

FLOAT32_BYTES = 4


def read_inputs(raw: Any) -> tuple[list[str], int, int]:
    """(the input strings, the tokens sent as token ids, the number of inputs).

    Raises InvalidRequest naming ``input`` when it is not a string, a token array,
    or a non-empty list of either.
    """
    if isinstance(raw, str):
        return [raw], 0, 1
    if isinstance(raw, list) and raw and all(int_or_none(v) is not None for v in raw):
        return [], len(raw), 1
    if isinstance(raw, list) and raw:
        texts: list[str] = []
        token_ids = 0
        for value in raw:
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list) and all(int_or_none(v) is not None for v in value):
                token_ids += len(value)
            else:
                break
        else:
            return texts, token_ids, len(raw)
    raise InvalidRequest(
        "'input' must be a string, a list of strings, or a list of token arrays.",
        param="input",
    )


def vector_dimensions(embedding: Any) -> int | None:
    """The length of one vector, sent as floats or as base64 little-endian float32."""
    if isinstance(embedding, list):
        return len(embedding)
    if isinstance(embedding, str):
        try:
            return len(base64.b64decode(embedding, validate=True)) // FLOAT32_BYTES
        except (binascii.Error, ValueError):
            return None
    return None


def embeddings_summary(answer: JsonObject) -> JsonObject:
    """An embeddings answer without its vectors: their count, dimensions and format."""
    data = answer.get("data")
    vectors = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    first = vectors[0].get("embedding") if vectors else None
    return {
        "object": answer.get("object", "list"),
        "model": answer.get("model"),
        "usage": answer.get("usage"),
        "vectors": len(vectors),
        "dimensions": vector_dimensions(first),
        "encoding_format": "base64" if isinstance(first, str) else "float",
    }


class Embeddings:
    name = "embeddings"
    dialect = "openai"
    provider = "openai"
    upstream_path = "/embeddings"
    keeps_answers = False

    def read_request(self, body: JsonObject, headers: dict[str, str]) -> RequestFacts:
        model = require_model(body)
        if body.get("input") is None:
            raise InvalidRequest("you must provide an input parameter", param="input")
        texts, token_ids, count = read_inputs(body.get("input"))
        end_user = body.get("user") if isinstance(body.get("user"), str) else None
        return RequestFacts(
            model=model,
            is_stream=False,
            end_user=end_user or headers.get("x-metergate-end-user") or None,
            prompt_text=texts,
            message_count=count,
            prompt_token_ids=token_ids,
            has_completion=False,
        )

    def upstream_body(
        self, body: JsonObject, facts: RequestFacts, upstream_model: str
    ) -> JsonObject:
        return {**body, "model": upstream_model}

    def read_usage(self, answer: JsonObject) -> Usage:
        return read_openai_usage(answer.get("usage"))

    def stream_reader(self, facts: RequestFacts) -> StreamReader:
        raise InvalidRequest("Embeddings do not stream.", param="stream")

    def recorded_answer(self, answer: JsonObject) -> JsonObject | None:
        return embeddings_summary(answer)
