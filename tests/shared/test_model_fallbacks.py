"""Fallback chains in the catalogue: written by ``upsert_model`` and the CLI, read by the proxy."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from proxy.cli import main
from proxy.config_cache import ConfigCache
from shared import accounts
from shared.accounts import AccountError
from shared.db import transaction
from shared.models import ModelPrice


def add(engine: Engine, name: str, provider: str = "openai", **extra: Any) -> None:
    with transaction(engine) as session:
        accounts.upsert_model(
            session,
            name,
            provider=provider,
            upstream_model=None,
            input_per_mtok=Decimal(1),
            output_per_mtok=Decimal(2),
            **extra,
        )


def fallbacks_of(engine: Engine, name: str) -> list[str] | None:
    with Session(engine) as session:
        row = session.get(ModelPrice, name)
        assert row is not None
        return row.fallbacks


def names(count: int) -> list[str]:
    return [f"fb-{uuid.uuid4().hex[:8]}" for _ in range(count)]


def test_fallbacks_are_stored_kept_and_cleared(engine: Engine) -> None:
    primary, first, second = names(3)
    add(engine, second)
    add(engine, first)
    add(engine, primary, fallbacks=[first, second])
    assert fallbacks_of(engine, primary) == [first, second]
    add(engine, primary)  # a price change keeps the chain
    assert fallbacks_of(engine, primary) == [first, second]
    add(engine, primary, fallbacks=[])
    assert fallbacks_of(engine, primary) is None


def test_proxy_config_reads_the_chain(engine: Engine) -> None:
    primary, fallback = names(2)
    add(engine, fallback)
    add(engine, primary, fallbacks=[fallback])
    model = ConfigCache(engine).model(primary)
    assert model is not None and model.fallbacks == (fallback,)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (["self"], "its own fallback"),
        (["missing"], "not in the catalogue"),
        (["gpt", "gpt"], "must not repeat"),
    ],
)
def test_bad_fallbacks_are_refused(engine: Engine, chain: list[str], message: str) -> None:
    primary, gpt, claude = names(3)
    add(engine, gpt)
    add(engine, claude, provider="anthropic")
    real = {"self": primary, "missing": "no-such-model", "claude": claude, "gpt": gpt}
    with pytest.raises(AccountError, match=message):
        add(engine, primary, fallbacks=[real[name] for name in chain])


def test_fallbacks_may_be_models_of_the_other_provider(engine: Engine) -> None:
    primary, claude = names(2)
    add(engine, claude, provider="anthropic")
    add(engine, primary, fallbacks=[claude])
    assert fallbacks_of(engine, primary) == [claude]


def test_cli_model_add_takes_fallbacks(engine: Engine, db_url: str) -> None:
    primary, fallback = names(2)
    add(engine, fallback)
    cli = CliRunner(env={"METERGATE_DATABASE_URL": db_url})
    result = cli.invoke(
        main,
        ["model", "add", primary, "--provider", "openai"]
        + ["--input-per-mtok", "1", "--output-per-mtok", "2", "--fallbacks", f" {fallback} "],
    )
    assert result.exit_code == 0, result.output
    assert fallbacks_of(engine, primary) == [fallback]
    listing = cli.invoke(main, ["model", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows[primary]["fallbacks"] == [fallback]

    refused = cli.invoke(
        main,
        ["model", "add", primary, "--provider", "openai"]
        + ["--input-per-mtok", "1", "--output-per-mtok", "2", "--fallbacks", primary],
    )
    assert refused.exit_code != 0 and "its own fallback" in refused.output
