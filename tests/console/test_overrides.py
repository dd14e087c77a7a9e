"""Overrides page: per-user and per-key limits reach the database, the audit log and the proxy."""

from __future__ import annotations

from collections.abc import Callable

import openai
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from shared import accounts
from shared.console_users import Actor
from shared.db import transaction
from shared.models import ApiKey, AuditEntry
from tests.support import ProxyServer, seed_accounts, wait_for

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def open_overrides(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/overrides.py").run()
    assert not at.exception, at.exception
    return at, actor


def model_status(proxy: ProxyServer, key: str, model: str) -> int:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_overrides_page_shows_users_and_keys(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_overrides(console_app)
    assert at.title[0].value == "Overrides"
    assert acct.user in at.selectbox(key="override-user").options
    assert any(acct.user in label for label in at.selectbox(key="override-key").options)


def test_a_user_override_reaches_the_proxy_and_clearing_it_inherits_again(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    at, actor = open_overrides(console_app)
    at.selectbox(key="override-user").select(acct.user).run()
    at.multiselect(key=f"user-{acct.user}-models").set_value(["gpt-4o-mini"])
    at.number_input(key=f"user-{acct.user}-rpm").set_value(500)
    at.button(key="save-user").click().run()
    assert not at.error, at.error
    wait_for(lambda: model_status(console_proxy, acct.key, "gpt-4o") == 403, timeout=5)
    with transaction(console_engine) as session:
        user = accounts.get_user(session, acct.user)
        assert (user.rpm, user.models) == (500, ["gpt-4o-mini"])
        entry = session.scalars(select(AuditEntry).where(AuditEntry.target_id == acct.user)).one()
    assert (entry.action, entry.actor) == ("user.limits", actor.name)
    assert entry.before is not None and entry.after is not None
    assert (entry.before["rpm"], entry.after["rpm"]) == (None, 500)

    at.multiselect(key=f"user-{acct.user}-models").set_value([])
    at.number_input(key=f"user-{acct.user}-rpm").set_value(None)
    at.button(key="save-user").click().run()
    wait_for(lambda: model_status(console_proxy, acct.key, "gpt-4o") == 200, timeout=5)
    with transaction(console_engine) as session:
        user = accounts.get_user(session, acct.user)
        assert (user.rpm, user.models) == (None, None)


def test_a_key_override_and_its_end_user_tier(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_overrides(console_app)
    at.selectbox(key="override-key").select(acct.key_id).run()
    at.number_input(key=f"key-{acct.key_id}-tpm").set_value(9000)
    at.selectbox(key=f"key-{acct.key_id}-end_user_tier").select(acct.tier)
    at.button(key="save-key").click().run()
    assert not at.error, at.error
    with transaction(console_engine) as session:
        key = session.get(ApiKey, acct.key_id)
        assert key is not None and key.tpm == 9000
        assert key.end_user_tier is not None and key.end_user_tier.name == acct.tier


def test_an_override_that_does_not_validate_is_refused(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_overrides(console_app)
    at.selectbox(key="override-user").select(acct.user).run()
    at.number_input(key=f"user-{acct.user}-max_tokens").set_value(0)
    at.button(key="save-user").click().run()
    assert any("max_tokens must be at least 1" in e.value for e in at.error)
    with transaction(console_engine) as session:
        assert accounts.get_user(session, acct.user).max_tokens is None
