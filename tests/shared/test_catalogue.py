"""The model catalogue: seeded with current public prices, never overwriting edited ones."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared import accounts
from shared.catalogue import SEED_MODELS, ModelEntry, seed_catalogue
from shared.db import transaction
from shared.models import ModelPrice

REQUIRED = {
    "gpt-4o": "openai",
    "gpt-4o-mini": "openai",
    "gpt-4.1": "openai",
    "gpt-4.1-mini": "openai",
    "claude-sonnet-4-5": "anthropic",
    "claude-haiku-4-5": "anthropic",
    "claude-3-5-haiku-latest": "anthropic",
}


def catalogue(engine: Engine) -> dict[str, ModelEntry]:
    with Session(engine) as session:
        return {row.name: ModelEntry.from_row(row) for row in session.scalars(select(ModelPrice))}


def test_upgrade_seeds_the_common_openai_and_anthropic_models(engine: Engine) -> None:
    seeded = catalogue(engine)
    for name, provider in REQUIRED.items():
        assert name in seeded, f"{name} is missing from the catalogue"
        assert seeded[name].provider == provider
        assert seeded[name].upstream_model


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_seeded_prices_are_positive_decimals_in_the_providers_order(
    engine: Engine, name: str
) -> None:
    entry = catalogue(engine)[name]
    prices = (
        entry.input_per_mtok,
        entry.cached_input_per_mtok,
        entry.cache_write_per_mtok,
        entry.output_per_mtok,
    )
    assert all(isinstance(price, Decimal) and price > 0 for price in prices)
    assert entry.cached_input_per_mtok < entry.input_per_mtok < entry.output_per_mtok
    if entry.provider == "anthropic":
        assert entry.cache_write_per_mtok == entry.input_per_mtok * Decimal("1.25")
        assert entry.cached_input_per_mtok == entry.input_per_mtok / 10
    else:
        assert entry.cache_write_per_mtok == entry.input_per_mtok


def test_stored_prices_round_trip_exactly(engine: Engine) -> None:
    seeded = catalogue(engine)
    for entry in SEED_MODELS:
        if entry.name in REQUIRED:
            assert seeded[entry.name] == entry


def test_seeding_again_keeps_prices_an_admin_edited(engine: Engine) -> None:
    # o3: a seeded model no proxy test calls, restored to its list price afterwards.
    original = next(entry for entry in SEED_MODELS if entry.name == "o3")

    def set_input_price(price: Decimal) -> None:
        with transaction(engine) as session:
            accounts.upsert_model(
                session,
                original.name,
                provider=original.provider,
                upstream_model=original.upstream_model,
                input_per_mtok=price,
                output_per_mtok=original.output_per_mtok,
                cached_input_per_mtok=original.cached_input_per_mtok,
                cache_write_per_mtok=original.cache_write_per_mtok,
            )

    set_input_price(Decimal("1.234567"))
    try:
        with transaction(engine) as session:
            assert seed_catalogue(session) == 0
        assert catalogue(engine)["o3"].input_per_mtok == Decimal("1.234567")
    finally:
        set_input_price(original.input_per_mtok)
