"""The deterministic model: tokenizer, text and schema-driven values (pure functions)."""

from __future__ import annotations

import random
from typing import Any

import jsonschema
import pytest

from proxy.simulator.completion import ToolSpec, compose
from proxy.simulator.schema_values import generate_value
from proxy.simulator.text import count_tokens, digest_of, generate_text, split_pieces


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("Hello, world.", 4), ("  spaced   out ", 2), ('{"a":1}', 7), ("naïve café!", 3)],
)
def test_tokenizer_counts_words_and_punctuation(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_generated_text_is_deterministic_and_splits_into_its_tokens() -> None:
    for index in range(200):
        digest = digest_of("model", [{"role": "user", "content": str(index)}], "")
        text = generate_text(digest)
        assert text == generate_text(digest)
        pieces = split_pieces(text)
        assert "".join(pieces) == text
        assert len(pieces) == count_tokens(text)
        assert 8 <= len(pieces) <= 60
        assert text[0].isupper() and text.endswith(".")


def test_truncated_completion_has_exactly_the_cap_in_tokens() -> None:
    digest = digest_of("m", "x")
    for cap in (1, 2, 5, 7):
        completion = compose(digest, max_tokens=cap)
        assert completion.tokens == count_tokens(completion.text) == cap
        assert completion.is_truncated
    tool = compose(digest, max_tokens=None, tool=ToolSpec("f", None))
    assert tool.text == "{}" and tool.tool_name == "f"


SCHEMAS: list[Any] = [
    {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
    {"type": "array", "items": {"type": "integer", "multipleOf": 5}, "minItems": 4},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": ["null", "boolean"]},
    {"type": "string", "minLength": 12, "maxLength": 14},
    {"type": "string", "format": "uuid"},
    {"enum": ["x", 2, None]},
    {"const": {"fixed": True}},
    {"oneOf": [{"type": "null"}, {"type": "integer", "minimum": 10, "maximum": 10}]},
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ]
    },
    {
        "type": "object",
        "properties": {"node": {"$ref": "#/$defs/node"}},
        "required": ["node"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name"],
            }
        },
    },
    {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}],
        "items": False,
        "maxItems": 2,
    },
    {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "maxItems": 2},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_generated_values_are_valid_for_their_schema(schema: Any) -> None:
    for seed in range(25):
        value = generate_value(schema, random.Random(seed))
        jsonschema.validate(value, schema)
        assert value == generate_value(schema, random.Random(seed))


def test_unresolvable_ref_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unresolvable"):
        generate_value({"$ref": "#/$defs/missing"}, random.Random(0))
