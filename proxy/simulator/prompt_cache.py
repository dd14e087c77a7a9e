"""Prompt-cache reporting in the OpenAI and Anthropic styles.

A prompt is a sequence of `PromptUnit`s (a tools block, a system block, a message or a
content block). A prefix is identified by a running hash over the units' canonical JSON,
seeded with a scope (dialect and model), and remembered in the app's `BoundedSet`.

OpenAI (automatic): when the prompt has >= 1024 tokens, the longest proper prefix of whole
units seen before is reported as `cached_tokens`, rounded down to a multiple of 128;
like the real API, nothing below 1024 cached tokens is reported. Every prefix of the
prompt (including the whole prompt) is then remembered.

Anthropic (explicit): units carrying `cache_control` are breakpoints; only breakpoints
whose prefix has >= 1024 tokens are cacheable. The longest cacheable prefix seen before is
a cache read; the tokens from there to the last cacheable breakpoint are a cache write.
All cacheable breakpoints are then remembered. (The real API also looks back up to 20
blocks before a breakpoint and has per-model minimums; the simulator does neither.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .state import BoundedSet

MIN_CACHEABLE_TOKENS: Final = 1024
OPENAI_CACHE_INCREMENT: Final = 128


@dataclass(frozen=True, slots=True)
class PromptUnit:
    """A piece of a prompt: its canonical JSON value, its tokens, and whether it is an
    explicit cache breakpoint (Anthropic `cache_control`)."""

    value: Any
    tokens: int
    is_breakpoint: bool = False


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Anthropic-style cache accounting of one request."""

    read_tokens: int = 0
    created_tokens: int = 0


def _running_hashes(scope: str, units: Sequence[PromptUnit]) -> list[tuple[bytes, int]]:
    """(hash, cumulative tokens) after each unit."""
    current = hashlib.blake2b(scope.encode(), digest_size=16).digest()
    tokens = 0
    result: list[tuple[bytes, int]] = []
    for unit in units:
        encoded = orjson.dumps(unit.value, option=orjson.OPT_SORT_KEYS)
        current = hashlib.blake2b(current + encoded, digest_size=16).digest()
        tokens += unit.tokens
        result.append((current, tokens))
    return result


def openai_cached_tokens(
    seen: BoundedSet, scope: str, units: Sequence[PromptUnit], prompt_tokens: int
) -> int:
    """`prompt_tokens_details.cached_tokens` for a prompt, remembering its prefixes."""
    if prompt_tokens < MIN_CACHEABLE_TOKENS:
        return 0
    prefixes = _running_hashes("openai\0" + scope, units)
    cached = 0
    for key, tokens in reversed(prefixes[:-1]):
        if key in seen:
            cached = tokens - tokens % OPENAI_CACHE_INCREMENT
            break
    for key, _ in prefixes:
        seen.add(key)
    return cached if cached >= MIN_CACHEABLE_TOKENS else 0


def anthropic_cache_usage(seen: BoundedSet, scope: str, units: Sequence[PromptUnit]) -> CacheUsage:
    """Cache read/write tokens for a prompt, remembering its cacheable breakpoints."""
    if not any(unit.is_breakpoint for unit in units):
        return CacheUsage()
    prefixes = _running_hashes("anthropic\0" + scope, units)
    cacheable = [
        prefixes[index]
        for index, unit in enumerate(units)
        if unit.is_breakpoint and prefixes[index][1] >= MIN_CACHEABLE_TOKENS
    ]
    if not cacheable:
        return CacheUsage()
    read = 0
    for key, tokens in reversed(cacheable):
        if key in seen:
            read = tokens
            break
    for key, _ in cacheable:
        seen.add(key)
    return CacheUsage(read_tokens=read, created_tokens=cacheable[-1][1] - read)
