"""The model catalogue: public list prices (USD per 1M tokens) of current models.

OpenAI bills no extra for writing its prompt cache, so the cache-write price of
an OpenAI model is its input price. Anthropic's cache-write price is the
5-minute cache's (1.25 x input). Prices as published by the providers in 2025.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ModelPrice

PROVIDERS = ("openai", "anthropic")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    provider: str
    upstream_model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    output_per_mtok: Decimal
    # Models tried in order when this one keeps failing (of either provider).
    fallbacks: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: ModelPrice) -> ModelEntry:
        return cls(
            name=row.name,
            provider=row.provider,
            upstream_model=row.upstream_model,
            input_per_mtok=Decimal(row.input_per_mtok),
            cached_input_per_mtok=Decimal(row.cached_input_per_mtok),
            cache_write_per_mtok=Decimal(row.cache_write_per_mtok),
            output_per_mtok=Decimal(row.output_per_mtok),
            fallbacks=tuple(row.fallbacks or ()),
        )


def _openai(name: str, inp: str, cached: str, out: str) -> ModelEntry:
    return ModelEntry(
        name, "openai", name, Decimal(inp), Decimal(cached), Decimal(inp), Decimal(out)
    )


def _anthropic(name: str, inp: str, read: str, write: str, out: str) -> ModelEntry:
    return ModelEntry(
        name, "anthropic", name, Decimal(inp), Decimal(read), Decimal(write), Decimal(out)
    )


SEED_MODELS: tuple[ModelEntry, ...] = (
    _openai("gpt-4o", "2.50", "1.25", "10.00"),
    _openai("gpt-4o-mini", "0.15", "0.075", "0.60"),
    _openai("gpt-4.1", "2.00", "0.50", "8.00"),
    _openai("gpt-4.1-mini", "0.40", "0.10", "1.60"),
    _openai("gpt-4.1-nano", "0.10", "0.025", "0.40"),
    _openai("gpt-5", "1.25", "0.125", "10.00"),
    _openai("gpt-5-mini", "0.25", "0.025", "2.00"),
    _openai("gpt-5-nano", "0.05", "0.005", "0.40"),
    _openai("o3", "2.00", "0.50", "8.00"),
    _openai("o4-mini", "1.10", "0.275", "4.40"),
    _openai("text-embedding-3-small", "0.02", "0.02", "0"),
    _openai("text-embedding-3-large", "0.13", "0.13", "0"),
    _anthropic("claude-opus-4-1", "15.00", "1.50", "18.75", "75.00"),
    _anthropic("claude-opus-4-5", "5.00", "0.50", "6.25", "25.00"),
    _anthropic("claude-sonnet-4-6", "3.00", "0.30", "3.75", "15.00"),
    _anthropic("claude-sonnet-4-5", "3.00", "0.30", "3.75", "15.00"),
    _anthropic("claude-sonnet-4-0", "3.00", "0.30", "3.75", "15.00"),
    _anthropic("claude-haiku-4-5", "1.00", "0.10", "1.25", "5.00"),
    _anthropic("claude-3-5-haiku-latest", "0.80", "0.08", "1.00", "4.00"),
)


def seed_catalogue(session: Session) -> int:
    """Insert the seed models that are missing; never overwrite edited prices."""
    existing = set(session.scalars(select(ModelPrice.name)))
    now = datetime.now(UTC)
    added = 0
    for entry in SEED_MODELS:
        if entry.name in existing:
            continue
        session.add(
            ModelPrice(
                name=entry.name,
                provider=entry.provider,
                upstream_model=entry.upstream_model,
                input_per_mtok=entry.input_per_mtok,
                cached_input_per_mtok=entry.cached_input_per_mtok,
                cache_write_per_mtok=entry.cache_write_per_mtok,
                output_per_mtok=entry.output_per_mtok,
                updated_at=now,
            )
        )
        added += 1
    return added
