"""How much of a call's bodies the request log keeps, per tenant (``tenants.body_storage``).

- ``full``: the bodies as sent and answered, with secrets redacted (``shared.redact``:
  keys, tokens and card numbers are never stored, whatever the tenant's choice);
- ``redacted``: the shape without the words: the JSON keeps its structure, numbers,
  booleans and the values that name things rather than say them (role, type, model,
  ids, finish reasons, tool names), and every other string becomes ``[REDACTED:text]``.
  Tokens, cost and the rest of the metadata are kept as they are. A body that is not
  JSON becomes the marker;
- ``none``: no bodies at all (the metadata row is still written).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from shared.redact import redact

FULL, REDACTED, NONE = "full", "redacted", "none"
BODY_STORAGE_CHOICES: Final = (FULL, REDACTED, NONE)
TEXT_MARKER: Final = "[REDACTED:text]"
# Strings under these keys name things (who spoke, what kind of part, which model or
# tool); they are kept by "redacted", which removes only what was said.
NAMING_KEYS: Final = frozenset(
    {
        "role",
        "type",
        "model",
        "object",
        "id",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "name",
        "finish_reason",
        "stop_reason",
        "status",
        "tool_choice",
        "encoding_format",
        "service_tier",
        "system_fingerprint",
        "media_type",
        "detail",
    }
)


def stored_body(text: str | None, storage: str = FULL) -> str | None:
    """``text`` as the request log keeps it under ``storage``; empty and ``none`` give None.
    An unknown ``storage`` keeps nothing (the safe side). Pure; never raises."""
    if not text or storage not in (FULL, REDACTED):
        return None
    if storage == FULL:
        return redact(text)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return TEXT_MARKER
    return orjson.dumps(_without_text(document, None)).decode()


def _without_text(value: Any, key: str | None) -> Any:
    if isinstance(value, str):
        return redact(value) if key in NAMING_KEYS else TEXT_MARKER
    if isinstance(value, dict):
        return {name: _without_text(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_without_text(item, key) for item in value]
    return value
