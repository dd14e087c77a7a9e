"""Caps page: tenant and global monthly USD caps, validated, audited and live at the proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import openai
import pytest
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from shared import accounts
from shared.console_users import Actor
from shared.db import transaction
from shared.models import AuditEntry
from tests.support import ProxyServer, seed_accounts, wait_for

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def open_caps(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/caps.py").run()
    assert not at.exception, at.exception
    return at, actor


def status_of_call(proxy: ProxyServer, key: str) -> int:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.fixture()
def no_global_cap(console_engine: Engine) -> Iterator[None]:
    """Other tests share the database: whatever happens, leave no global cap behind."""
    yield
    with transaction(console_engine) as session:
        accounts.set_global_monthly_usd(session, None)


def test_caps_page_shows_tenants_with_their_spend(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, _ = open_caps(console_app)
    assert at.title[0].value == "Caps"
    assert acct.tenant in at.dataframe[0].value["name"].tolist()


def test_a_tenant_cap_reaches_the_proxy_and_removing_it_lifts_it(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    assert status_of_call(console_proxy, acct.key) == 200
    at, actor = open_caps(console_app)
    at.selectbox(key="cap-tenant").select(acct.tenant).run()
    at.number_input(key=f"tenant-cap-{acct.tenant}-usd").set_value(0.0)
    at.button(key="save-tenant-cap").click().run()
    assert not at.error, at.error
    wait_for(lambda: status_of_call(console_proxy, acct.key) == 429, timeout=5)
    with transaction(console_engine) as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.target_id == acct.tenant)).one()
    assert (entry.action, entry.actor) == ("cap.tenant", actor.name)
    assert entry.before == {"name": acct.tenant, "monthly_usd": None}
    assert entry.after is not None and Decimal(entry.after["monthly_usd"]) == 0

    at.number_input(key=f"tenant-cap-{acct.tenant}-usd").set_value(None)
    at.button(key="save-tenant-cap").click().run()
    wait_for(lambda: status_of_call(console_proxy, acct.key) == 200, timeout=5)


@pytest.mark.usefixtures("no_global_cap")
def test_the_global_cap_reaches_the_proxy(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    at, actor = open_caps(console_app)
    at.number_input(key="global-cap-usd").set_value(0.0)
    at.button(key="save-global-cap").click().run()
    assert not at.error, at.error
    wait_for(lambda: status_of_call(console_proxy, acct.key) == 429, timeout=5)
    with transaction(console_engine) as session:
        assert accounts.get_global_monthly_usd(session) == 0
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "cap.global")
            .order_by(AuditEntry.id.desc())
        ).first()
    assert entry is not None and entry.actor == actor.name
    assert entry.after == {"monthly_usd": "0.0"}

    at.number_input(key="global-cap-usd").set_value(None)
    at.button(key="save-global-cap").click().run()
    wait_for(lambda: status_of_call(console_proxy, acct.key) == 200, timeout=5)
