"""Prices page: change a model's prices and fallbacks, add a model; validation refuses."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from shared.console_users import Actor
from shared.db import transaction
from shared.models import AuditEntry, ModelPrice

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]
NEW_MODEL = "➕ new model"


def open_prices(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/prices.py").run()
    assert not at.exception, at.exception
    return at, actor


def test_prices_page_lists_the_catalogue(console_app: ConsoleApp) -> None:
    at, _ = open_prices(console_app)
    assert at.title[0].value == "Prices"
    assert {"gpt-4o-mini", "claude-haiku-4-5"} <= set(at.dataframe[0].value["name"])


def test_adding_a_model_and_then_changing_its_prices(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    name = f"house-model-{uuid.uuid4().hex[:6]}"
    at, actor = open_prices(console_app)
    at.selectbox(key="price-model").select(NEW_MODEL).run()
    at.text_input(key="price-new-name").input(name)
    at.text_input(key="price-new-upstream").input("gpt-4o-mini")
    at.number_input(key="price-new-input_per_mtok").set_value(0.5)
    at.number_input(key="price-new-output_per_mtok").set_value(2.0)
    at.multiselect(key="price-new-fallbacks").set_value(["gpt-4o-mini"])
    at.button(key="save-price").click().run()
    assert not at.error, at.error

    at.selectbox(key="price-model").select(name).run()
    at.number_input(key=f"price-{name}-output_per_mtok").set_value(3.0)
    at.button(key="save-price").click().run()
    assert not at.error, at.error
    with transaction(console_engine) as session:
        row = session.get(ModelPrice, name)
        assert row is not None
        assert (row.upstream_model, row.input_per_mtok) == ("gpt-4o-mini", Decimal("0.5"))
        assert row.output_per_mtok == Decimal(3)
        assert row.cached_input_per_mtok == Decimal("0.5")  # unset: the input price
        assert row.fallbacks == ["gpt-4o-mini"]
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.target_id == name).order_by(AuditEntry.id)
        ).all()
    assert [e.action for e in entries] == ["price.create", "price.update"]
    assert all(e.actor == actor.name for e in entries)
    assert entries[1].before is not None and entries[1].after is not None
    assert Decimal(entries[1].before["output_per_mtok"]) == 2
    assert Decimal(entries[1].after["output_per_mtok"]) == 3


def test_a_model_without_prices_is_refused(console_app: ConsoleApp, console_engine: Engine) -> None:
    name = f"no-price-{uuid.uuid4().hex[:6]}"
    at, _ = open_prices(console_app)
    at.selectbox(key="price-model").select(NEW_MODEL).run()
    at.text_input(key="price-new-name").input(name)
    at.button(key="save-price").click().run()
    assert [e.value for e in at.error] == ["Input and output prices are required."]
    with transaction(console_engine) as session:
        assert session.get(ModelPrice, name) is None
