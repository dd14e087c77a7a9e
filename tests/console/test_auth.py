"""Sign-in, sessions and roles: no page without signing in, roles enforced on every action."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from streamlit.testing.v1 import AppTest

from console.auth import PAGES, SESSION_KEY, SignIn
from shared import admin, console_users
from shared.accounts import Limits, TierPolicy
from shared.console_users import Actor, PermissionDenied
from shared.db import transaction
from shared.models import AuditEntry, ConsoleUser
from tests.console.conftest import APP, APP_TIMEOUT_SECONDS, TEST_PASSWORD, make_console_user
from tests.support import seed_accounts

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]
PAGES_DIR = APP.parent / "app_pages"
ADMIN_PAGES = ["tiers", "overrides", "caps", "keys", "prices", "users", "audit"]
SUPPORT_PAGES = ["conversations", "flagged"]
VIEWER_PAGES = ["spend", "latency", "cache", "export"]


def fresh_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_SECONDS)


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign-in-name").input(name)
    at.text_input(key="sign-in-password").input(password)
    return at.button(key="sign-in-submit").click().run()


def is_signed_in(at: AppTest) -> bool:
    return any("Signed in as" in c.value for c in at.sidebar.caption)


def test_nothing_but_the_sign_in_form_without_signing_in(console_env: str) -> None:
    at = fresh_app().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["metergate console"]
    assert not is_signed_in(at)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("app_pages/tiers.py")


def test_signing_in_with_a_password(console_env: str, console_engine: Engine) -> None:
    actor = make_console_user(console_engine, "viewer")
    at = sign_in(fresh_app().run(), actor.name, TEST_PASSWORD)
    assert not at.exception and not at.error, (at.exception, at.error)
    assert is_signed_in(at)
    assert f"**{actor.name}** (viewer)" in at.sidebar.caption[0].value

    at.button(key="sign-out").click().run()
    assert not is_signed_in(at)
    assert SESSION_KEY not in at.session_state


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [
        ("known", "wrong password!", "Wrong name or password."),
        ("nobody-by-that-name", TEST_PASSWORD, "Wrong name or password."),
        ("known", "", "Enter your name and password."),
    ],
)
def test_sign_in_refusals(
    console_env: str, console_engine: Engine, name: str, password: str, message: str
) -> None:
    actor = make_console_user(console_engine, "admin")
    at = sign_in(fresh_app().run(), actor.name if name == "known" else name, password)
    assert [e.value for e in at.error] == [message]
    assert not is_signed_in(at)


def test_guessing_is_braked_per_name(console_env: str, console_engine: Engine) -> None:
    actor = make_console_user(console_engine, "admin")
    at = fresh_app().run()
    for _ in range(5):
        sign_in(at, actor.name, "not the password")
    sign_in(at, actor.name, TEST_PASSWORD)
    assert any("Too many failed attempts" in e.value for e in at.error)
    assert not is_signed_in(at)


def test_a_disabled_account_is_signed_out_at_its_next_click(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    at, actor = console_app("admin")
    assert is_signed_in(at)
    with transaction(console_engine) as session:
        user = console_users.find_console_user(session, actor.name)
        assert user is not None
        user.is_disabled = True
    at.run()
    assert not is_signed_in(at)
    assert any("can no longer sign in" in i.value for i in at.info)


def test_a_session_ends_after_its_length(console_env: str, console_engine: Engine) -> None:
    actor = make_console_user(console_engine, "admin")
    at = fresh_app()
    at.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time() - 9 * 3600)
    at.run()
    assert not is_signed_in(at)
    assert any("expired" in i.value for i in at.info)


def test_a_changed_role_applies_at_the_next_click(
    console_app: ConsoleApp, console_engine: Engine
) -> None:
    at, actor = console_app("admin")
    at.switch_page("app_pages/tiers.py").run()
    assert at.title[0].value == "Tiers"
    with transaction(console_engine) as session:
        user = console_users.find_console_user(session, actor.name)
        assert user is not None
        user.role = "viewer"
    at.run()  # the tiers page is no longer in the navigation: the first allowed page opens
    assert at.title[0].value != "Tiers"


@pytest.mark.parametrize(
    ("role", "reachable", "unreachable"),
    [
        ("viewer", VIEWER_PAGES, SUPPORT_PAGES + ADMIN_PAGES),
        ("support", VIEWER_PAGES + SUPPORT_PAGES, ADMIN_PAGES),
        ("admin", VIEWER_PAGES + SUPPORT_PAGES + ADMIN_PAGES, []),
    ],
)
def test_each_role_reaches_its_pages_and_no_others(
    console_app: ConsoleApp, role: str, reachable: list[str], unreachable: list[str]
) -> None:
    at, _ = console_app(role)
    for page in reachable:
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    for page in unreachable:
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"app_pages/{page}.py")


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_an_admin_page_run_by_a_viewer_stops_before_showing_anything(
    console_env: str, console_engine: Engine, page: str
) -> None:
    """Defence in depth: a page checks the role itself, whatever the navigation did."""
    actor = make_console_user(console_engine, "viewer")
    at = AppTest.from_file(str(PAGES_DIR / f"{page}.py"), default_timeout=APP_TIMEOUT_SECONDS)
    at.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time())
    at.session_state["metergate_actor"] = actor
    at.run()
    assert [e.value for e in at.error] == [
        "This page needs the admin role; you are signed in as viewer."
    ]
    assert not at.title and not at.dataframe and not at.button


@pytest.mark.parametrize("page", sorted(p.stem for p in PAGES_DIR.glob("*.py")))
def test_every_page_checks_the_role_itself(page: str) -> None:
    assert "require_role(" in (PAGES_DIR / f"{page}.py").read_text()


def admin_actions(acct: Any) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """Every admin write, with valid arguments: refused for its role alone."""
    return [
        ("update_tier", admin.update_tier, (acct.tier, Limits(rpm=1), TierPolicy())),
        ("create_tier", admin.create_tier, (f"t-{uuid.uuid4().hex[:6]}", Limits(), TierPolicy())),
        ("set_user_overrides", admin.set_user_overrides, (acct.user, Limits(rpm=1))),
        ("set_key_overrides", admin.set_key_overrides, (acct.key_id, Limits(rpm=1), None)),
        ("set_tenant_cap", admin.set_tenant_cap, (acct.tenant, Decimal(1))),
        ("set_global_cap", admin.set_global_cap, (Decimal(1),)),
        ("create_key", admin.create_key, (acct.user,)),
        ("revoke_key", admin.revoke_key, (acct.key_id,)),
        ("create_tenant", admin.create_tenant, (f"x-{uuid.uuid4().hex[:6]}",)),
        (
            "create_user",
            admin.create_user,
            (f"{uuid.uuid4().hex[:6]}@x.example", acct.tenant, acct.tier),
        ),
        ("set_user_tier", admin.set_user_tier, (acct.user, acct.tier)),
    ]


@pytest.mark.parametrize("role", ["viewer", "support"])
def test_no_admin_action_is_done_for_a_lesser_role(console_engine: Engine, role: str) -> None:
    acct = seed_accounts(console_engine)
    actor = Actor(f"{role}-someone", role)
    with transaction(console_engine) as session:
        audit_rows = session.scalar(select(func.count()).select_from(AuditEntry))
    for name, action, args in admin_actions(acct):
        with pytest.raises(PermissionDenied), transaction(console_engine) as session:
            action(session, actor, *args)
        with transaction(console_engine) as session:
            assert session.scalar(select(func.count()).select_from(AuditEntry)) == audit_rows, name
    with pytest.raises(PermissionDenied), transaction(console_engine) as session:
        admin.save_model_price(
            session,
            actor,
            "gpt-4o-mini",
            provider="openai",
            upstream_model=None,
            input_per_mtok=Decimal(0),
            output_per_mtok=Decimal(0),
        )


def test_oidc_sign_in_takes_the_role_of_the_console_account(
    console_env: str, console_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERGATE_CONSOLE_OIDC", "true")
    email = f"{uuid.uuid4().hex[:8]}@acme.example"
    with transaction(console_engine) as session:
        console_users.create_console_user(session, email, "support")  # no password: OIDC only
    at = fresh_app()
    at.user = {"is_logged_in": True, "email": email, "name": "Ada"}
    at.run()
    assert not at.exception, at.exception
    assert f"**{email}** (support)" in at.sidebar.caption[0].value
    at.switch_page("app_pages/conversations.py").run()
    with pytest.raises(ValueError):
        at.switch_page("app_pages/tiers.py")


def test_an_oidc_sign_in_older_than_the_session_length_ends(
    console_env: str, console_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERGATE_CONSOLE_OIDC", "true")
    email = f"{uuid.uuid4().hex[:8]}@acme.example"
    with transaction(console_engine) as session:
        console_users.create_console_user(session, email, "viewer")
    at = fresh_app()
    at.user = {"is_logged_in": True, "email": email, "iat": int(time.time()) - 9 * 3600}
    at.run()
    assert not is_signed_in(at)
    assert at.user == {"is_logged_in": False}  # st.logout() ended the identity cookie too


def test_oidc_without_a_console_account_is_refused(
    console_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERGATE_CONSOLE_OIDC", "true")
    at = fresh_app()
    at.user = {"is_logged_in": True, "email": "stranger@elsewhere.example"}
    at.run()
    assert not is_signed_in(at)
    assert any("has no console account" in e.value for e in at.error)
    assert at.button(key="oidc-default") is not None  # and the SSO button is offered


def test_an_oidc_only_account_cannot_sign_in_with_a_password(
    console_env: str, console_engine: Engine
) -> None:
    name = f"sso-{uuid.uuid4().hex[:8]}"
    with transaction(console_engine) as session:
        console_users.create_console_user(session, name, "admin")
        assert session.scalars(select(ConsoleUser).where(ConsoleUser.name == name)).one()
    at = sign_in(fresh_app().run(), name, "anything at all")
    assert [e.value for e in at.error] == ["Wrong name or password."]


def test_pages_dir_holds_the_pages_the_navigation_names() -> None:
    assert {Path(p.file).stem for p in PAGES} >= set(ADMIN_PAGES + SUPPORT_PAGES + VIEWER_PAGES)
