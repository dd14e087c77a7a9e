"""Conversations page: search, open a record as chat bubbles, flag it, replay it through a
real proxy; the session view; a viewer is refused; conversation text is only ever text."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from shared.console_users import Actor
from shared.models import AuditEntry, Flag, RequestRecord, User
from shared.records import write_records
from tests.console.page_support import open_page, open_page_file
from tests.shared.conversation_records import call_record, chat_body, fresh_owner
from tests.support import Accounts, ProxyServer, seed_accounts, wait_for

PAGE = "app_pages/conversations.py"


@pytest.fixture()
def page(console_env: str, console_engine: Engine) -> Callable[..., tuple[AppTest, Actor]]:
    """``page(role="support", **query_params)``: the Conversations page, signed in."""

    def open_conversations(role: str = "support", **params: str) -> tuple[AppTest, Actor]:
        return open_page(console_engine, role, PAGE, **params)

    return open_conversations


Page = Callable[..., tuple[AppTest, Actor]]


def texts(at: AppTest) -> list[str]:
    return [element.value for element in at.text]


def test_the_page_lists_the_newest_records(page: Page, console_engine: Engine) -> None:
    owner = fresh_owner(console_engine)
    record = call_record(owner, prompt=f"smoke test {uuid.uuid4().hex}")
    write_records(console_engine, [record])
    at, _ = page()
    assert at.title[0].value == "Conversations"
    assert record.id in at.dataframe[0].value["id"].tolist()


def test_searching_by_text_and_opening_the_conversation(page: Page, console_engine: Engine) -> None:
    owner = fresh_owner(console_engine)
    word = f"zyzzyva{uuid.uuid4().hex[:8]}"
    wanted = call_record(owner, prompt=f"tell me about {word}", answer="It is a weevil.")
    other = call_record(owner, prompt="something else")
    write_records(console_engine, [wanted, other])
    at, _ = page()
    at.text_input(key="q-text").input(word)
    at.button(key="q-submit").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert at.dataframe[0].value["id"].tolist() == [wanted.id]

    at.button(key="conv-open").click().run()
    assert not at.exception, at.exception
    assert at.query_params["record"] == wanted.id
    assert at.title[0].value == "Conversation"
    bubbles = at.chat_message
    assert [b.name for b in bubbles] == ["user", "assistant"]
    assert f"tell me about {word}" in texts(at) and "It is a weevil." in texts(at)
    assert [m.label for m in at.metric][:3] == ["Status", "Model", "Tokens in / out"]
    assert any(word in code.value for code in at.code)  # the raw JSON

    at.button(key="back-to-search").click().run()
    assert "record" not in at.query_params and at.title[0].value == "Conversations"
    assert at.text_input(key="q-text").value == word  # the search is still there
    assert at.dataframe[0].value["id"].tolist() == [wanted.id]


def test_every_filter_of_the_form_reaches_the_search(page: Page, console_engine: Engine) -> None:
    owner = fresh_owner(console_engine)
    session_id = f"sess-{uuid.uuid4().hex[:8]}"
    wanted = call_record(
        owner, session_id=session_id, end_user="bob", status=429, model="gpt-4o", is_cached=True
    )
    write_records(console_engine, [wanted, call_record(owner, session_id=session_id)])
    at, _ = page()
    at.text_input(key="q-session").input(session_id)
    at.text_input(key="q-end-user").input("bob")
    at.selectbox(key="q-tenant").select(owner.accounts.tenant)
    at.selectbox(key="q-user").select(owner.accounts.user)
    at.selectbox(key="q-model").select("gpt-4o")
    at.selectbox(key="q-status").select("4xx")
    at.selectbox(key="q-cache").select("cache hits")
    at.button(key="q-submit").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert at.dataframe[0].value["id"].tolist() == [wanted.id]
    at.selectbox(key="q-flag").select("flagged")
    at.button(key="q-submit").click().run()
    assert [i.value for i in at.info] == ["No record matches this search."]


def test_a_search_without_words_says_what_to_fix(page: Page) -> None:
    at, _ = page()
    at.text_input(key="q-text").input("-only -excluded")
    at.button(key="q-submit").click().run()
    assert any("at least one word" in e.value for e in at.error)


def test_pages_of_results(page: Page, console_engine: Engine) -> None:
    owner = fresh_owner(console_engine)
    records = [call_record(owner) for _ in range(55)]
    write_records(console_engine, records)
    at, _ = page()
    at.selectbox(key="q-tenant").select(owner.accounts.tenant)
    at.button(key="q-submit").click().run()
    first = at.dataframe[0].value["id"].tolist()
    assert len(first) == 50 and at.button(key="page-newer").disabled
    at.button(key="page-older").click().run()
    second = at.dataframe[0].value["id"].tolist()
    assert len(second) == 5 and at.button(key="page-older").disabled
    assert set(first) | set(second) == {r.id for r in records}
    at.button(key="page-newer").click().run()
    assert at.dataframe[0].value["id"].tolist() == first


def test_flagging_and_unflagging_from_the_conversation(page: Page, console_engine: Engine) -> None:
    record = call_record(fresh_owner(console_engine))
    write_records(console_engine, [record])
    at, actor = page(record=record.id)
    at.selectbox(key="flag-reason").select("wrong answer")
    at.text_area(key="flag-note").input("says the sky is green")
    at.button(key="flag-submit").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert "Flagged the record." in [s.value for s in at.success]
    with Session(console_engine) as session:
        flag = session.scalars(select(Flag).where(Flag.record_id == record.id)).one()
        assert (flag.reason, flag.note, flag.created_by) == (
            "wrong answer",
            "says the sky is green",
            actor.name,
        )
        entry = session.scalars(  # by this actor: another target kind may share the id
            select(AuditEntry).where(
                AuditEntry.target_id == str(flag.id), AuditEntry.actor == actor.name
            )
        ).one()
        assert (entry.action, entry.actor) == ("flag.create", actor.name)
        stored = session.get(RequestRecord, record.id)
        assert stored is not None and stored.is_flagged
    assert at.dataframe[-1].value["reason"].tolist() == ["wrong answer"]

    at.button(key="unflag").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    with Session(console_engine) as session:
        assert session.scalars(select(Flag).where(Flag.record_id == record.id)).all() == []


HOSTILE = '<script>alert("owned")</script> ![x](https://tracker.example/p.png) **bold**'


def test_conversation_text_is_shown_as_text_never_as_html_or_markdown(
    page: Page, console_engine: Engine
) -> None:
    owner = fresh_owner(console_engine)
    body = json.dumps(
        {
            "messages": [
                {"role": "user", "content": HOSTILE},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "<img src=x>",
                            "function": {"name": "[x](javascript:1)", "arguments": "{}"},
                        }
                    ],
                },
            ]
        }
    )
    record = call_record(owner, request_body=body, answer=HOSTILE)
    write_records(console_engine, [record])
    at, _ = page(record=record.id)
    assert texts(at).count(HOSTILE) == 2  # the prompt and the answer, verbatim, as text
    markdown = [m.value for m in [*at.markdown, *at.caption]]
    for value in markdown:  # every < and ]( in markdown is escaped
        assert not re.search(r"(?<!\\)<", value) and not re.search(r"(?<!\\)\]\(", value)
    assert any("\\[x\\]\\(javascript" in value for value in markdown)


def test_a_viewer_cannot_open_the_page(console_env: str, console_engine: Engine) -> None:
    at = open_page_file(console_engine, "viewer", PAGE)
    assert [e.value for e in at.error] == [
        "This page needs the support role; you are signed in as viewer."
    ]
    assert not at.text_input and not at.dataframe


# -- replay through a real proxy ----------------------------------------------------------


@pytest.fixture()
def console_key(
    console_engine: Engine, console_proxy: ProxyServer, monkeypatch: pytest.MonkeyPatch
) -> Accounts:
    """The console's own gateway key, and the proxy replays go to."""
    accounts = seed_accounts(console_engine, label=f"console-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("METERGATE_CONSOLE_PROXY_URL", console_proxy.base_url)
    monkeypatch.setenv("METERGATE_CONSOLE_API_KEY", accounts.key)
    return accounts


def user_id_of(engine: Engine, email: str) -> int:
    with Session(engine) as session:
        return session.scalars(select(User.id).where(User.email == email)).one()


def test_replay_makes_a_new_linked_record_billed_to_the_console(
    page: Page,
    console_engine: Engine,
    console_proxy: ProxyServer,
    console_key: Accounts,
) -> None:
    app_user = seed_accounts(console_engine)
    client = openai.OpenAI(base_url=console_proxy.base_url + "/v1", api_key=app_user.key)
    with client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Name a colour."},
            ],
            user="end-user-7",
        )
    original_id = raw.headers["x-metergate-record-id"]
    console_proxy.record(original_id)  # written

    at, actor = page(record=original_id)
    assert at.text_area(key="replay-system").value == "Answer in one word."
    at.selectbox(key="replay-model").select("gpt-4o")
    at.toggle(key="replay-edit-system").set_value(True)
    at.text_area(key="replay-system").input("Answer in French.")
    at.button(key="replay-submit").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)

    replay, body = console_proxy.record(
        wait_for(lambda: replays_of(console_engine, original_id))[0]
    )
    assert replay.replay_of == original_id
    assert replay.user_id == user_id_of(console_engine, console_key.user)
    assert replay.user_id != user_id_of(console_engine, app_user.user)
    assert (replay.model, replay.status, replay.end_user) == ("gpt-4o", 200, None)
    assert body is not None and body.request_body is not None
    sent = json.loads(body.request_body)
    assert sent["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert "user" not in sent and "stream" not in sent
    assert [c.language for c in at.code if c.language == "diff"] or any(
        s.value == "The replay answered exactly the same." for s in at.success
    )
    assert "**Original answer**" in [m.value for m in at.markdown]
    with Session(console_engine) as session:
        entry = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "record.replay", AuditEntry.target_id == original_id
            )
        ).one()
        assert entry.actor == actor.name
        assert entry.after is not None and entry.after["replay_id"] == replay.id


def replays_of(engine: Engine, record_id: str) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(select(RequestRecord.id).where(RequestRecord.replay_of == record_id))
        )


def test_replay_without_a_console_key_says_how_to_turn_it_on(
    page: Page, console_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METERGATE_CONSOLE_API_KEY", raising=False)
    record = call_record(fresh_owner(console_engine))
    write_records(console_engine, [record])
    at, _ = page(record=record.id)
    at.button(key="replay-submit").click().run()
    assert any("METERGATE_CONSOLE_API_KEY" in e.value for e in at.error)


def test_the_session_view_follows_a_whole_conversation_in_order(
    console_env: str, console_engine: Engine
) -> None:
    owner = fresh_owner(console_engine)
    session_id = f"chat-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(minutes=5)
    calls = [
        call_record(
            owner, at=start + timedelta(seconds=i), session_id=session_id, prompt=q, answer=a
        )
        for i, (q, a) in enumerate([("hi", "hello"), ("how are you", "fine"), ("bye", "ciao")])
    ]
    write_records(console_engine, list(reversed(calls)))
    at, _ = open_page(console_engine, "support", "app_pages/session.py", session=session_id)
    assert at.title[0].value == "Session"
    assert at.dataframe[0].value["id"].tolist() == [c.id for c in calls]
    assert texts(at) == ["hi", "hello", "how are you", "fine", "bye", "ciao"]
    assert [m.value for m in at.metric][0] == "3"

    at, _ = open_page(console_engine, "support", PAGE, record=calls[1].id)
    assert not at.exception, at.exception  # the detail links to its session (a page link)


def test_opening_another_record_starts_the_replay_form_from_that_record(
    page: Page, console_engine: Engine
) -> None:
    owner = fresh_owner(console_engine)
    first = call_record(owner, request_body=chat_body("q", system="Be a pirate."))
    second = call_record(owner, request_body=chat_body("q", system="Be a poet."))
    write_records(console_engine, [first, second])
    at, _ = page(record=first.id)
    assert at.text_area(key="replay-system").value == "Be a pirate."
    at.text_area(key="replay-system").input("edited for the first record").run()
    at.query_params["record"] = second.id
    at.run()
    assert at.text_area(key="replay-system").value == "Be a poet."
