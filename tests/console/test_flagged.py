"""Flagged page: the queue of automatic and manual flags; assign, note, resolve, reopen."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from shared.console_users import Actor
from shared.models import AuditEntry, Flag
from shared.records import write_records
from tests.console.page_support import open_page, open_page_file
from tests.shared.conversation_records import call_record, fresh_owner


@pytest.fixture()
def flagged(console_env: str, console_engine: Engine) -> Callable[[], tuple[AppTest, Actor]]:
    return lambda: open_page(console_engine, "support", "app_pages/flagged.py")


def flag_of(engine: Engine, record_id: str) -> Flag:
    with Session(engine) as session:
        return session.scalars(select(Flag).where(Flag.record_id == record_id)).one()


def test_the_queue_shows_automatic_flags_with_their_records(
    flagged: Callable[[], tuple[AppTest, Actor]], console_engine: Engine
) -> None:
    reason = f"upstream_error {uuid.uuid4().hex[:6]}"
    record = call_record(
        fresh_owner(console_engine), status=502, flag_reasons=[reason], prompt="why 502?"
    )
    write_records(console_engine, [record])
    at, _ = flagged()
    assert at.title[0].value == "Flagged"
    at.text_input(key="flagged-reason").input(reason).run()
    table = at.dataframe[0].value
    assert table["record"].tolist() == [record.id]
    assert (table["source"][0], table["status"][0], table["http"][0]) == ("auto", "open", 502)
    assert table["preview"][0] == "why 502?"


def test_assign_note_resolve_and_reopen_a_flag(
    flagged: Callable[[], tuple[AppTest, Actor]], console_engine: Engine
) -> None:
    reason = f"moderation: {uuid.uuid4().hex[:6]}"
    record = call_record(fresh_owner(console_engine), flag_reasons=[reason])
    write_records(console_engine, [record])
    at, actor = flagged()
    at.text_input(key="flagged-reason").input(reason).run()

    at.selectbox(key="flagged-assign-to").select(actor.name)
    at.button(key="flagged-assign").click().run()
    assert not at.error, at.error
    assert flag_of(console_engine, record.id).assignee == actor.name

    at.text_area(key="flagged-note").input("customer told")
    at.button(key="flagged-resolve").click().run()
    assert not at.error, at.error
    flag = flag_of(console_engine, record.id)
    assert (flag.status, flag.note) == ("resolved", "customer told")
    assert [i.value for i in at.info] == ["No flag matches."]  # the queue shows open flags

    at.selectbox(key="flagged-status").select("resolved").run()
    assert record.id in at.dataframe[0].value["record"].tolist()
    at.button(key="flagged-reopen").click().run()
    assert flag_of(console_engine, record.id).status == "open"
    with Session(console_engine) as session:
        actions = session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.target_type == "flag", AuditEntry.target_id == str(flag.id))
            .order_by(AuditEntry.id)
        ).all()
    assert actions == ["flag.assign", "flag.resolve", "flag.reopen"]


def test_a_viewer_cannot_open_the_queue(console_env: str, console_engine: Engine) -> None:
    at = open_page_file(console_engine, "viewer", "app_pages/flagged.py")
    assert [e.value for e in at.error] == [
        "This page needs the support role; you are signed in as viewer."
    ]
    assert not at.dataframe
