"""Token usage and its price, in ``Decimal`` dollars.

``Usage.prompt_tokens`` is the whole prompt, including tokens read from or
written to the provider's prompt cache; each part is priced at its own rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.00000001")


class Prices(Protocol):
    @property
    def input_per_mtok(self) -> Decimal: ...
    @property
    def cached_input_per_mtok(self) -> Decimal: ...
    @property
    def cache_write_per_mtok(self) -> Decimal: ...
    @property
    def output_per_mtok(self) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def uncached_prompt_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def price_usage(usage: Usage, prices: Prices) -> Decimal:
    """The cost of ``usage`` at ``prices`` (USD per million tokens), to 1e-8 USD."""
    cost = (
        usage.uncached_prompt_tokens * prices.input_per_mtok
        + usage.cache_read_tokens * prices.cached_input_per_mtok
        + usage.cache_write_tokens * prices.cache_write_per_mtok
        + usage.completion_tokens * prices.output_per_mtok
    ) / MILLION
    return cost.quantize(COST_QUANTUM)


def price_prompt_cache_savings(usage: Usage, prices: Prices) -> Decimal:
    """What reading ``usage``'s cached prompt tokens saved against the full input price."""
    per_mtok = max(Decimal(0), prices.input_per_mtok - prices.cached_input_per_mtok)
    return (usage.cache_read_tokens * per_mtok / MILLION).quantize(COST_QUANTUM)


def format_usd(amount: Decimal) -> str:
    """Plain decimal notation (never exponent form) for headers and CLI output."""
    return f"{amount.quantize(COST_QUANTUM):f}"
