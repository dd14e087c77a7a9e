"""Cost in Decimal dollars, from token usage and the catalogue's per-million prices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.catalogue import SEED_MODELS, ModelEntry
from shared.pricing import Usage, format_usd, price_usage

CATALOGUE = {entry.name: entry for entry in SEED_MODELS}


def entry(name: str) -> ModelEntry:
    return CATALOGUE[name]


def test_openai_cached_tokens_are_inside_prompt_tokens_and_billed_at_the_cached_rate() -> None:
    # gpt-4o: $2.50 input, $1.25 cached input, $10.00 output per 1M tokens.
    usage = Usage(prompt_tokens=2_000, completion_tokens=300, cache_read_tokens=1_536)
    cost = price_usage(usage, entry("gpt-4o"))
    # (2000 - 1536) * 2.50 + 1536 * 1.25 + 300 * 10.00, per million
    assert cost == Decimal("0.00116") + Decimal("0.00192") + Decimal("0.003")
    assert cost == Decimal("0.00608000")
    assert isinstance(cost, Decimal)


def test_openai_call_without_cache_is_input_plus_output() -> None:
    # gpt-4o-mini: $0.15 input, $0.60 output per 1M tokens.
    cost = price_usage(Usage(prompt_tokens=1_000, completion_tokens=500), entry("gpt-4o-mini"))
    assert cost == Decimal("0.00045000")


def test_anthropic_cache_reads_and_writes_are_billed_at_their_own_rates() -> None:
    # claude-sonnet-4-5: $3 input, $0.30 cache read, $3.75 cache write, $15 output.
    usage = Usage(
        prompt_tokens=100 + 2_000 + 4_000,  # uncached + read + write
        completion_tokens=250,
        cache_read_tokens=2_000,
        cache_write_tokens=4_000,
    )
    cost = price_usage(usage, entry("claude-sonnet-4-5"))
    expected = (
        Decimal(100) * 3 + Decimal(2_000) * Decimal("0.30") + Decimal(4_000) * Decimal("3.75")
    ) / 1_000_000 + Decimal(250) * 15 / 1_000_000
    assert cost == expected == Decimal("0.019650")


def test_uncached_prompt_tokens_exclude_both_cache_reads_and_writes() -> None:
    usage = Usage(prompt_tokens=50, cache_read_tokens=20, cache_write_tokens=10)
    assert usage.uncached_prompt_tokens == 20
    assert usage.total_tokens == 50


@pytest.mark.parametrize(
    ("usage", "cost"),
    [
        (Usage(), Decimal("0")),
        (Usage(prompt_tokens=1), Decimal("0.00000015")),
        (Usage(completion_tokens=1), Decimal("0.00000060")),
        # 1 token at $0.075/1M is $0.000000075: rounded to the nearest 1e-8 (half even).
        (Usage(prompt_tokens=1, cache_read_tokens=1), Decimal("0.00000008")),
        (Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000), Decimal("0.75")),
    ],
)
def test_cost_is_exact_to_the_hundred_millionth_of_a_dollar(usage: Usage, cost: Decimal) -> None:
    priced = price_usage(usage, entry("gpt-4o-mini"))
    assert priced == cost
    assert priced.as_tuple().exponent == -8


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0"), "0.00000000"),
        (Decimal("1E-8"), "0.00000001"),
        (Decimal("0.000015"), "0.00001500"),
        (Decimal("12.5"), "12.50000000"),
    ],
)
def test_usd_amounts_are_formatted_without_exponents(amount: Decimal, shown: str) -> None:
    assert format_usd(amount) == shown


def test_price_of_many_calls_adds_up_without_float_drift() -> None:
    one = price_usage(Usage(prompt_tokens=7, completion_tokens=3), entry("gpt-4.1-mini"))
    assert sum([one] * 1_000, Decimal(0)) == one * 1_000
    assert one == Decimal("0.00000760")
