"""Deterministic JSON values that satisfy a JSON schema.

`generate_value(schema, rng)` walks the schema and returns a value valid against it for
the usual subset used by tool parameters and structured outputs: `type` (single or a
list), `enum`, `const`, `properties`/`required`, `items`/`prefixItems`,
`minItems`/`maxItems`, `minimum`/`maximum` (inclusive and exclusive), `multipleOf` for
integers, `minLength`/`maxLength`, the common string `format`s, `anyOf`/`oneOf` (the first
non-null branch is used), `allOf` (merged shallowly) and local `$ref`s (`#/...`).
Not honoured: `pattern`, `not`, `if/then/else`, `dependentSchemas`; a schema using them
may get a value that fails validation. Every declared property is filled (so required
ones always are); recursion stops at depth 8 with only required properties and the
minimum number of items.
"""

from __future__ import annotations

import random
import uuid
from typing import Any, Final

from .text import generate_words

MAX_DEPTH: Final = 8
_FORMATS: Final[dict[str, str]] = {
    "date-time": "2024-05-01T12:00:00Z",
    "date": "2024-05-01",
    "time": "12:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/resource",
    "url": "https://example.com/resource",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "P1D",
}


def generate_value(schema: Any, rng: random.Random, root: Any = None) -> Any:
    """A value valid against `schema` (see module docstring for the supported subset).

    `root` is the document that local `$ref`s resolve against; it defaults to `schema`.
    Raises ValueError for a `$ref` that does not resolve.
    """
    return _generate(schema, rng, schema if root is None else root, 0)


def _generate(schema: Any, rng: random.Random, root: Any, depth: int) -> Any:
    if not isinstance(schema, dict):
        return generate_words(rng, 2)
    if "$ref" in schema:
        return _generate(_resolve(schema["$ref"], root), rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _generate(_first_non_null(schema[key]), rng, root, depth + 1)
    if schema.get("allOf"):
        return _generate(_merge(schema), rng, root, depth + 1)
    kind = _kind_of(schema)
    if kind == "object":
        return _generate_object(schema, rng, root, depth)
    if kind == "array":
        return _generate_array(schema, rng, root, depth)
    if kind == "integer":
        return _generate_integer(schema, rng)
    if kind == "number":
        return _generate_number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _generate_string(schema, rng)


def _kind_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        return str(non_null[0]) if non_null else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _resolve(ref: Any, root: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise ValueError(f"unsupported $ref {ref!r}")
    node = root
    for raw in ref[1:].split("/"):
        if not raw:
            continue
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise ValueError(f"unresolvable $ref {ref!r}")
    return node


def _first_non_null(options: list[Any]) -> Any:
    for option in options:
        if not (isinstance(option, dict) and option.get("type") == "null"):
            return option
    return options[0]


def _merge(schema: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _generate_object(
    schema: dict[str, Any], rng: random.Random, root: Any, depth: int
) -> dict[str, Any]:
    properties: dict[str, Any] = schema.get("properties") or {}
    required: list[str] = list(schema.get("required") or [])
    names = required if depth >= MAX_DEPTH else [*properties, *required]
    result: dict[str, Any] = {}
    for name in names:
        if name not in result:
            result[name] = _generate(properties.get(name, {}), rng, root, depth + 1)
    return result


def _generate_array(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> list[Any]:
    low = int(schema.get("minItems", 0))
    high = int(schema.get("maxItems", max(low, 3)))
    prefix = schema.get("prefixItems") or []
    count = low if depth >= MAX_DEPTH else max(low, min(high, rng.randint(1, 3)))
    count = max(count, min(len(prefix), high))
    items = schema.get("items", {})
    values: list[Any] = []
    for index in range(count):
        item_schema = prefix[index] if index < len(prefix) else items
        value = _generate(item_schema, rng, root, depth + 1)
        if schema.get("uniqueItems") and value in values:
            value = _unique_fallback(item_schema, rng, root, depth, values)
        values.append(value)
    return values


def _unique_fallback(
    schema: Any, rng: random.Random, root: Any, depth: int, taken: list[Any]
) -> Any:
    for _ in range(20):
        value = _generate(schema, rng, root, depth + 1)
        if value not in taken:
            return value
    return value


def _bounds(schema: dict[str, Any], default_low: float, default_high: float) -> tuple[float, float]:
    low = float(schema.get("minimum", default_low))
    high = float(schema.get("maximum", max(default_high, low)))
    if "exclusiveMinimum" in schema:
        low = max(low, float(schema["exclusiveMinimum"]) + 1e-6)
    if "exclusiveMaximum" in schema:
        high = min(high, float(schema["exclusiveMaximum"]) - 1e-6)
    if "minimum" not in schema and "exclusiveMinimum" not in schema and high < low:
        low = high - default_high
    return low, high


def _generate_integer(schema: dict[str, Any], rng: random.Random) -> int:
    low, high = _bounds(schema, 0, 100)
    low_int, high_int = int(-(-low // 1)), int(high // 1)
    step = int(schema.get("multipleOf", 1)) or 1
    first = -(-low_int // step) * step
    if first > high_int:
        return first
    return first + step * rng.randint(0, (high_int - first) // step)


def _generate_number(schema: dict[str, Any], rng: random.Random) -> float:
    low, high = _bounds(schema, 0, 100)
    value = round(rng.uniform(low, high), 2)
    return min(max(value, low), high)


def _generate_string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
    if not text:
        text = generate_words(rng, rng.randint(1, 3))
    min_length = int(schema.get("minLength", 0))
    max_length = int(schema.get("maxLength", max(len(text), min_length)))
    if len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    return text[:max_length]
