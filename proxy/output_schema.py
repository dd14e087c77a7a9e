"""Stage: check a chat answer against the JSON schema its request asked for.

A request with ``response_format`` ``{"type": "json_schema", "json_schema": {"schema": …}}``
expects every choice's message content to be a JSON document valid against the schema;
a Responses request with ``text.format`` ``{"type": "json_schema", "schema": …}``, every
message item's text.
The pipeline asks again (non-streamed calls, ``METERGATE_OUTPUT_RETRIES`` times) while
the answer is invalid, then serves what it has with ``x-metergate-output-valid`` and,
when invalid, the flag ``invalid_output``. Streams are checked once assembled: flag only.

Validators are compiled once per schema (keyed by a hash of its canonical JSON) and
kept per process in a bounded map.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

log = logging.getLogger(__name__)

INVALID_OUTPUT = "invalid_output"
OUTPUT_VALID_HEADER = "x-metergate-output-valid"
MAX_CACHED_VALIDATORS = 512


class SchemaValidators:
    """Compiled validators by schema hash; thread-safe, least recently used dropped first."""

    def __init__(self, capacity: int = MAX_CACHED_VALIDATORS) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._validators: OrderedDict[bytes, Validator | None] = OrderedDict()

    def get(self, schema: dict[str, Any]) -> Validator | None:
        """The validator for ``schema``; None when the schema itself is invalid (then the
        provider refuses the request, or the answer cannot be checked)."""
        digest = hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()
        with self._lock:
            if digest in self._validators:
                self._validators.move_to_end(digest)
                return self._validators[digest]
        validator = compile_validator(schema)
        with self._lock:
            self._validators[digest] = validator
            while len(self._validators) > self._capacity:
                self._validators.popitem(last=False)
        return validator


def compile_validator(schema: dict[str, Any]) -> Validator | None:
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError:
        log.info("event=output_schema_invalid")
        return None
    return cls(schema)


def is_valid_answer(validator: Validator, answer: dict[str, Any]) -> bool | None:
    """Whether each choice's content (a response's message text) is JSON valid against
    the schema.

    None when there is nothing to check: no choices, or only refusals and tool calls
    (the schema governs the content, and a refusal is an answer the model may give).
    """
    if isinstance(answer.get("output"), list):
        return _is_valid_response(validator, answer["output"])
    verdict: bool | None = None
    choices = answer.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return False
        content = message.get("content")
        if content is None and (message.get("refusal") or message.get("tool_calls")):
            continue
        if not isinstance(content, str):
            return False
        is_valid = _is_valid_document(validator, content)
        if is_valid is False:
            return False
        verdict = verdict or is_valid
    return verdict


def _is_valid_response(validator: Validator, output: list[Any]) -> bool | None:
    """The Responses API's form: each message item's text, its output_text parts joined."""
    verdict: bool | None = None
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue  # reasoning, function calls: not governed by the schema
        parts = [part for part in item.get("content") or [] if isinstance(part, dict)]
        texts = [str(part.get("text", "")) for part in parts if part.get("type") == "output_text"]
        if not texts:
            continue  # a refusal
        is_valid = _is_valid_document(validator, "".join(texts))
        if is_valid is False:
            return False
        verdict = verdict or is_valid
    return verdict


def _is_valid_document(validator: Validator, content: str) -> bool | None:
    """None when the schema cannot be applied (a ``$ref`` it cannot resolve)."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    try:
        return bool(validator.is_valid(document))
    except Unresolvable:  # the schema's fault, not the answer's
        log.info("event=output_schema_unresolvable")
        return None
