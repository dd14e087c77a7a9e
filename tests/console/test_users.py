"""Users and tenants page: usage against quotas; create tenants and users; move a user's tier."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import openai
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from shared import accounts
from shared.accounts import Limits
from shared.console_users import Actor
from shared.db import transaction
from shared.models import AuditEntry
from tests.support import ProxyServer, seed_accounts

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def open_users(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/users.py").run()
    assert not at.exception, at.exception
    return at, actor


def test_users_show_this_months_spend_against_their_quota(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine, limits=Limits(monthly_usd=Decimal(10)))
    client = openai.OpenAI(base_url=console_proxy.base_url + "/v1", api_key=acct.key)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    console_proxy.flush()
    at, _ = open_users(console_app)
    assert at.title[0].value == "Users and tenants"
    tenants, users = at.dataframe[0].value, at.dataframe[1].value
    user = users.set_index("email").loc[acct.user]
    assert user["spent_usd"] > 0 and user["monthly_usd_quota"] == 10
    assert 0 < user["usd_used"] < 1
    assert tenants.set_index("name").loc[acct.tenant, "spent_usd"] == user["spent_usd"]


def test_creating_a_tenant_and_a_user_and_moving_the_user(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct, other = seed_accounts(console_engine), seed_accounts(console_engine)
    tenant, email = f"org-{uuid.uuid4().hex[:6]}", f"{uuid.uuid4().hex[:6]}@org.example"
    at, _ = open_users(console_app)
    at.text_input(key="new-tenant-name").input(tenant)
    at.number_input(key="new-tenant-cap").set_value(250.0)
    at.button(key="create-tenant").click().run()
    assert not at.error, at.error

    at.text_input(key="new-user-email").input(email)
    at.selectbox(key="new-user-tenant").select(tenant)
    at.selectbox(key="new-user-tier").select(acct.tier)
    at.button(key="create-user").click().run()
    assert not at.error, at.error
    assert email in at.dataframe[1].value["email"].tolist()

    at.selectbox(key="user-tier-email").select(email)
    at.selectbox(key="user-tier-tier").select(other.tier)
    at.button(key="change-tier").click().run()
    assert not at.error, at.error
    with transaction(console_engine) as session:
        assert accounts.get_tenant(session, tenant).monthly_usd == 250
        user = accounts.get_user(session, email)
        assert (user.tenant.name, user.tier.name) == (tenant, other.tier)


def test_an_admin_sets_how_a_tenants_bodies_are_kept(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, actor = open_users(console_app)

    at.selectbox(key="bodies-tenant").select(acct.tenant)
    at.selectbox(key="bodies-storage").select("redacted")
    at.button(key="save-bodies").click().run()

    assert not at.error, at.error
    with transaction(console_engine) as session:
        assert accounts.get_tenant(session, acct.tenant).body_storage == "redacted"
        entry = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "tenant.body_storage", AuditEntry.target_id == acct.tenant
            )
        ).one()
    assert (entry.actor, entry.before, entry.after) == (
        actor.name,
        {"body_storage": "full"},
        {"body_storage": "redacted"},
    )


def test_a_user_without_an_email_address_is_refused(console_app: ConsoleApp) -> None:
    at, _ = open_users(console_app)
    at.text_input(key="new-user-email").input("not-an-address")
    at.button(key="create-user").click().run()
    assert any("is not an email address" in e.value for e in at.error)
