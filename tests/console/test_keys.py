"""Keys page: list with last use, create (the secret shown once), revoke (the proxy refuses)."""

from __future__ import annotations

from collections.abc import Callable

import openai
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from shared.console_users import Actor
from shared.db import transaction
from shared.models import ApiKey, AuditEntry
from tests.support import ProxyServer, seed_accounts, wait_for

ConsoleApp = Callable[[str], tuple[AppTest, Actor]]


def open_keys(console_app: ConsoleApp) -> tuple[AppTest, Actor]:
    at, actor = console_app("admin")
    at.switch_page("app_pages/keys.py").run()
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


def test_keys_page_lists_keys_with_their_last_use(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    assert status_of_call(console_proxy, acct.key) == 200
    console_proxy.flush()
    at, _ = open_keys(console_app)
    assert at.title[0].value == "Keys"
    listed = at.dataframe[0].value.set_index("id")
    assert listed.loc[acct.key_id, "user"] == acct.user
    assert listed.loc[acct.key_id, "last_used_at"] is not None
    assert acct.key not in at.dataframe[0].value.to_string()


def test_a_new_key_shows_its_secret_once_and_works_at_the_proxy(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    at, actor = open_keys(console_app)
    at.selectbox(key="new-key-user").select(acct.user)
    at.text_input(key="new-key-name").input("from-the-console")
    at.button(key="create-key").click().run()
    assert not at.error and not at.exception, (at.error, at.exception)
    secrets = [c.value for c in at.code if c.value.startswith("mg-")]
    assert len(secrets) == 1
    secret = secrets[0]
    assert any("shown this once" in w.value for w in at.warning)
    assert status_of_call(console_proxy, secret) == 200

    at.run()  # any next run: the secret is gone for good
    assert not [c.value for c in at.code if c.value.startswith("mg-")]
    with transaction(console_engine) as session:
        key = session.scalars(select(ApiKey).where(ApiKey.name == "from-the-console")).one()
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "key.create")
            .where(AuditEntry.target_id == str(key.id))
        ).one()
    assert entry.actor == actor.name and entry.before is None
    assert entry.after is not None and entry.after["prefix"] == key.prefix
    assert secret not in str(entry.after)


def test_revoking_a_key_refuses_it_at_the_proxy_within_seconds(
    console_app: ConsoleApp, console_engine: Engine, console_proxy: ProxyServer
) -> None:
    acct = seed_accounts(console_engine)
    assert status_of_call(console_proxy, acct.key) == 200
    at, actor = open_keys(console_app)
    at.selectbox(key="revoke-key-id").select(acct.key_id)
    at.button(key="revoke-key").click().run()
    assert any("Tick the box" in e.value for e in at.error)  # nothing happens unconfirmed

    at.checkbox(key="revoke-key-sure").check()
    at.button(key="revoke-key").click().run()
    assert not at.error, at.error
    wait_for(lambda: status_of_call(console_proxy, acct.key) == 401, timeout=5)
    with transaction(console_engine) as session:
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "key.revoke")
            .where(AuditEntry.target_id == str(acct.key_id))
        ).one()
    assert entry.actor == actor.name
    assert entry.before is not None and entry.before["revoked_at"] is None
    assert entry.after is not None and entry.after["revoked_at"] is not None
