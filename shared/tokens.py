"""Token estimates for reservations and for streams cut off before their usage arrived.

A deliberate over-estimate (one token per 3 UTF-8 bytes, plus per-message
overhead) rather than a model tokenizer: reservations are settled to the
provider's real usage afterwards, so the estimate only has to be safe and cheap.
"""

from __future__ import annotations

from collections.abc import Iterable

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def estimate_prompt_tokens(parts: Iterable[str]) -> int:
    total = 0
    for part in parts:
        total += estimate_tokens(part) + MESSAGE_OVERHEAD_TOKENS
    return total
