"""Audit page: every console change, newest first, with who, when, before and after."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from shared import admin
from shared.accounts import Limits, TierPolicy
from shared.console_users import Actor
from shared.db import transaction
from tests.support import seed_accounts

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def test_audit_page_shows_a_change_with_before_and_after(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    acct = seed_accounts(console_engine)
    at, actor = console_app("admin")
    with transaction(console_engine) as session:
        admin.update_tier(session, actor, acct.tier, Limits(rpm=42), TierPolicy())
    at.switch_page("app_pages/audit.py").run()
    assert not at.exception, at.exception
    log = at.dataframe[0].value
    newest = log.iloc[0]
    assert (newest["actor"], newest["action"]) == (actor.name, "tier.update")
    assert newest["target"] == f"tier {acct.tier}"
    assert "rpm" in newest["changed"].split(", ")
    before, after = json.loads(at.json[0].value), json.loads(at.json[1].value)
    assert (before["rpm"], after["rpm"]) == (None, 42)
    assert before["name"] == after["name"] == acct.tier


def test_audit_page_filters_by_who(console_app: ConsoleApp, console_engine: Engine) -> None:
    acct = seed_accounts(console_engine)
    at, actor = console_app("admin")
    other = Actor("someone-else", "admin")
    with transaction(console_engine) as session:
        admin.set_user_overrides(session, actor, acct.user, Limits(tpm=1000))
        admin.set_user_overrides(session, other, acct.user, Limits(tpm=2000))
    at.switch_page("app_pages/audit.py").run()
    at.selectbox[0].select(actor.name).run()
    log = at.dataframe[0].value
    assert set(log["actor"]) == {actor.name}
    at.text_input(key="audit-action").input("key.").run()
    assert at.info and "No changes match." in at.info[0].value
