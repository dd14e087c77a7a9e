"""Tiers page: every limit editable; a saved change reaches a running proxy within 5 s."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from shared import accounts
from shared.console_users import Actor
from shared.db import transaction
from shared.models import AuditEntry
from tests.support import ProxyServer, seed_accounts, wait_for

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def open_tiers(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/tiers.py").run()
    assert not at.exception, at.exception
    return at, actor


def test_tiers_page_lists_every_tier(console_app: ConsoleApp, console_engine: Engine) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_tiers(console_app)
    assert at.title[0].value == "Tiers"
    assert acct.tier in at.dataframe[0].value["name"].tolist()


def call(proxy: ProxyServer, key: str, model: str) -> int:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_editing_a_tier_changes_the_database_and_the_running_proxy(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    assert call(console_proxy, acct.key, "gpt-4o") == 200
    at, actor = open_tiers(console_app)
    at.selectbox(key="tier").select(acct.tier).run()
    at.number_input(key=f"tier-{acct.tier}-rpm").set_value(120)
    at.multiselect(key=f"tier-{acct.tier}-models").set_value(["gpt-4o-mini"])
    at.button(key="save-tier").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert f"Saved tier {acct.tier}." in [s.value for s in at.success]

    with transaction(console_engine) as session:
        tier = accounts.get_tier(session, acct.tier)
        assert (tier.rpm, tier.models) == (120, ["gpt-4o-mini"])
        entry = session.query(AuditEntry).filter_by(target_id=acct.tier).one()
        assert (entry.actor, entry.action) == (actor.name, "tier.update")
        assert entry.before is not None and entry.after is not None
        assert (entry.before["rpm"], entry.after["rpm"]) == (None, 120)
        assert entry.after["models"] == ["gpt-4o-mini"]
    wait_for(lambda: call(console_proxy, acct.key, "gpt-4o") == 403, timeout=5)
    assert call(console_proxy, acct.key, "gpt-4o-mini") == 200

    at.multiselect(key=f"tier-{acct.tier}-models").set_value([])
    at.button(key="save-tier").click().run()
    wait_for(lambda: call(console_proxy, acct.key, "gpt-4o") == 200, timeout=5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("max_tokens", 0, "max_tokens must be at least 1")],
)
def test_a_tier_edit_that_does_not_validate_changes_nothing(
    console_app: ConsoleApp, console_engine: Engine, field: str, value: int, message: str
) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_tiers(console_app)
    at.selectbox(key="tier").select(acct.tier).run()
    at.number_input(key=f"tier-{acct.tier}-{field}").set_value(value)
    at.button(key="save-tier").click().run()
    assert any(message in e.value for e in at.error)
    with transaction(console_engine) as session:
        assert getattr(accounts.get_tier(session, acct.tier), field) is None


def test_creating_a_tier(console_app: ConsoleApp, console_engine: Engine) -> None:
    at, _ = open_tiers(console_app)
    at.text_input(key="new-tier-name").input("gold-console")
    at.number_input(key="new-tier-tpm").set_value(50_000)
    at.button(key="create-tier").click().run()
    assert not at.error, at.error
    with transaction(console_engine) as session:
        assert accounts.get_tier(session, "gold-console").tpm == 50_000
