"""What a call may use at most, charged up front to token rate limits and quota reservations.

The charge is the prompt estimate (a deliberate over-estimate, plus the few tokens a
provider adds to prime the reply) and the completion allowance: the request's
``max_tokens`` clamped to the key's ceiling, else the ceiling, else a default. Both
are corrected to the provider's real usage once the call is over.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from proxy.config_cache import Principal
from proxy.endpoints.base import RequestFacts
from shared.pricing import Prices, Usage, price_usage
from shared.tokens import estimate_prompt_tokens

# A request that sets no max_tokens, under a tier with no ceiling, is charged this many.
DEFAULT_COMPLETION_TOKENS = 1024
# Tokens a chat prompt costs beyond its messages (reply priming): both providers add some.
REQUEST_OVERHEAD_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Charge:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def price(self, prices: Prices) -> Decimal:
        """The most this call can cost: prompt at the dearer of input and cache-write."""
        worst = _WorstPrompt(prices)
        return price_usage(Usage(self.prompt_tokens, self.completion_tokens), worst)


def charge_for(facts: RequestFacts, principal: Principal, *, attempts: int = 1) -> Charge:
    """The charge for one call that may ask the provider up to ``attempts`` times.

    A free call (``facts.is_billed`` false: token counting) is charged nothing; one
    without a completion (embeddings) only its prompt.
    """
    if not facts.is_billed:
        return Charge(prompt_tokens=0, completion_tokens=0)
    ceiling = principal.limits.max_tokens
    completion = facts.max_tokens or ceiling or DEFAULT_COMPLETION_TOKENS
    if ceiling is not None:
        completion = min(completion, ceiling)
    if not facts.has_completion:
        completion = 0
    prompt = (
        estimate_prompt_tokens(facts.prompt_text) + facts.prompt_token_ids + REQUEST_OVERHEAD_TOKENS
    )
    return Charge(prompt_tokens=prompt * attempts, completion_tokens=completion * attempts)


@dataclass(frozen=True, slots=True)
class _WorstPrompt:
    """Prices with every prompt token at the highest prompt rate (Anthropic cache writes)."""

    prices: Prices

    @property
    def input_per_mtok(self) -> Decimal:
        return max(self.prices.input_per_mtok, self.prices.cache_write_per_mtok)

    @property
    def cached_input_per_mtok(self) -> Decimal:
        return self.input_per_mtok

    @property
    def cache_write_per_mtok(self) -> Decimal:
        return self.input_per_mtok

    @property
    def output_per_mtok(self) -> Decimal:
        return self.prices.output_per_mtok
