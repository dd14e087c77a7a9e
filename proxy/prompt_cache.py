"""Stage: mark long system prompts for Anthropic's prompt cache, for tiers that ask for it.

Anthropic caches a prompt prefix only up to a ``cache_control`` breakpoint the
request sets. A tier with ``is_prompt_cache_marked`` lets the gateway set one on
the system prompt — the part of a conversation that stays the same from call to
call — when it is long enough to be cached (``MIN_MARKED_TOKENS``, estimated) and
the request carries no breakpoint of its own (the client's choice is never
changed, and Anthropic allows only four). Cache reads and writes are then priced
at their own rates like any other.
"""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import JsonObject, text_of
from shared.tokens import estimate_tokens

MIN_MARKED_TOKENS = 1024
MARKED_ENDPOINTS = frozenset({"messages"})
EPHEMERAL: JsonObject = {"type": "ephemeral"}


def mark_system_prompt(endpoint: str, body: JsonObject) -> JsonObject:
    """``body`` with a breakpoint on its system prompt, or ``body`` itself when unmarked.

    The caller's body is never changed in place.
    """
    system = body.get("system")
    if endpoint not in MARKED_ENDPOINTS or not system or has_cache_control(body):
        return body
    if estimate_tokens("".join(text_of(system))) < MIN_MARKED_TOKENS:
        return body
    if isinstance(system, str):
        return {**body, "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}]}
    if isinstance(system, list) and isinstance(system[-1], dict):
        return {**body, "system": [*system[:-1], {**system[-1], "cache_control": EPHEMERAL}]}
    return body


def has_cache_control(value: Any) -> bool:
    """True if any object inside ``value`` carries a ``cache_control`` field."""
    if isinstance(value, dict):
        return "cache_control" in value or any(has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(has_cache_control(item) for item in value)
    return False
