"""Searching records: the full-text index on PostgreSQL and SQLite, every filter, pages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, delete, inspect, select, text

from shared import search
from shared.db import alembic_config, make_engine, upgrade
from shared.models import Flag, RequestRecord
from shared.records import CallRecord, write_records
from shared.rollup import as_utc
from shared.search import (
    InvalidQuery,
    RecordQuery,
    parse_text_query,
    rebuild_search_index,
    record_detail,
    search_records,
    session_records,
)
from tests.shared.conversation_records import Owner, call_record, chat_body, fresh_owner, write
from tests.support import create_pg_database, drop_pg_database


def found(engine: Engine, owner: Owner, **query: Any) -> set[str]:
    """Ids of ``owner``'s records matching the query (every page)."""
    ids: set[str] = set()
    cursor = None
    while True:
        page = search_records(
            engine, RecordQuery(tenant_id=owner.tenant_id, **query), page_size=200, cursor=cursor
        )
        ids |= {record.id for record in page.records}
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_text_search_finds_words_of_the_prompt_and_of_the_answer(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    asked, answered, other = write(
        records_engine,
        call_record(owner, prompt="Where is the nearest aardvark sanctuary?"),
        call_record(owner, answer="Penguins huddle to keep warm."),
        call_record(owner, prompt="nothing to see", answer="indeed"),
    )
    assert found(records_engine, owner, text="aardvark") == {asked}
    assert found(records_engine, owner, text="PENGUINS") == {answered}
    assert found(records_engine, owner, text="aardvark penguins") == set()
    assert found(records_engine, owner, text="see indeed") == {other}


def test_text_search_reads_the_text_not_the_json_around_it(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    escaped = json.dumps({"messages": [{"role": "user", "content": "first line\nZebra crossing"}]})
    (record,) = write(records_engine, call_record(owner, request_body=escaped))
    assert found(records_engine, owner, text="zebra") == {record}  # not "nzebra"
    assert found(records_engine, owner, text="messages") == set()  # a key, not text
    assert found(records_engine, owner, text='"line zebra"') == {record}


def test_phrases_and_excluded_words(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    red_fox, fox_red = write(
        records_engine,
        call_record(owner, prompt="the quick red fox"),
        call_record(owner, prompt="a fox that is red"),
    )
    assert found(records_engine, owner, text="red fox") == {red_fox, fox_red}
    assert found(records_engine, owner, text='"red fox"') == {red_fox}
    assert found(records_engine, owner, text="fox -quick") == {fox_red}


def test_text_that_is_not_json_is_searchable_and_odd_bodies_are_still_written(
    records_engine: Engine,
) -> None:
    owner = fresh_owner(records_engine)
    nul = '{"messages": [{"role": "user", "content": "nul\\u0000 quokka"}]}'
    huge = json.dumps({"messages": [{"role": "user", "content": "wombat " * 60_000}]})
    plain, with_nul, big = write(
        records_engine,
        call_record(owner, request_body="not json at all: capybara", response_body=None),
        call_record(owner, request_body=nul),
        call_record(owner, request_body=huge),
    )
    assert found(records_engine, owner, text="capybara") == {plain}
    assert found(records_engine, owner, text="quokka") == {with_nul}
    assert found(records_engine, owner, text="wombat") == {big}


def test_text_search_is_case_and_language_agnostic(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    (record,) = write(records_engine, call_record(owner, prompt="Ein Café in Zürich, 東京"))
    assert found(records_engine, owner, text="café zürich") == {record}
    assert found(records_engine, owner, text="東京") == {record}


@pytest.mark.parametrize(
    "hostile",
    [
        "'; DROP TABLE request_records; --",
        '" OR 1=1 --',
        "aardvark' OR '1'='1",
        'NEAR(aardvark secret) OR "',
        "aardvark*",
        "aardvark AND -",
        "\\aardvark\\",
        "request_bodies_fts MATCH 'aardvark'",
        "aardvark) UNION SELECT id FROM console_users --",
        "%aardvark%",
        "aardvark:* & !secret | (x",
    ],
)
def test_hostile_search_text_is_only_ever_text(records_engine: Engine, hostile: str) -> None:
    owner = fresh_owner(records_engine)
    (record,) = write(records_engine, call_record(owner, prompt="aardvark secret"))
    result = found(records_engine, owner, text=hostile)
    assert result <= {record}
    for field in ("request_id", "session_id", "model", "end_user"):
        assert found(records_engine, owner, **{field: hostile}) == set()
    with pytest.raises(InvalidQuery):
        found(records_engine, owner, status=hostile)
    assert "request_records" in inspect(records_engine).get_table_names()
    assert found(records_engine, owner, text="aardvark") == {record}


@pytest.mark.parametrize("words", ["-aardvark", "!!! ... ???", '""', "- -"])
def test_search_text_without_a_word_to_look_for_is_refused(words: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_text_query(words)


def test_an_empty_search_box_does_not_filter(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    ids = set(write(records_engine, call_record(owner), call_record(owner)))
    assert found(records_engine, owner, text="   ") == ids


def test_every_filter(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    other_key = fresh_owner(records_engine)
    now = datetime.now(UTC)
    records = {
        "plain": call_record(owner, at=now - timedelta(hours=3)),
        "session": call_record(owner, session_id="sess-42", end_user="alice"),
        "claude": call_record(
            owner, model="claude-sonnet-4-6", dialect="anthropic", endpoint="messages"
        ),
        "limited": call_record(owner, status=429, error_code="rate_limit_exceeded"),
        "failed": call_record(owner, status=502, error_code="upstream_error"),
        "cached": call_record(owner, is_cached=True, client_request_id="client-req-7"),
        "flagged": call_record(owner, flag_reasons=["screening: secrets"]),
        "old": call_record(owner, at=now - timedelta(days=3), response_id="chatcmpl-abc123"),
    }
    write_records(records_engine, list(records.values()))
    ids = {name: record.id for name, record in records.items()}
    write(records_engine, call_record(other_key, session_id="sess-42"))

    def names(**query: Any) -> set[str]:
        result = found(records_engine, owner, **query)
        return {name for name, record_id in ids.items() if record_id in result}

    everything = set(ids)
    assert names() == everything
    assert names(request_id=ids["plain"]) == {"plain"}
    assert names(request_id="client-req-7") == {"cached"}
    assert names(request_id="chatcmpl-abc123") == {"old"}
    assert names(session_id="sess-42") == {"session"}
    assert names(end_user="alice") == {"session"}
    assert names(model="claude-sonnet-4-6") == {"claude"}
    assert names(user_id=owner.user_id) == everything
    assert names(user_id=other_key.user_id) == set()
    assert names(key_id=owner.key_id) == everything
    assert names(status="429") == {"limited"}
    assert names(status="4xx") == {"limited"}
    assert names(status="5xx") == {"failed"}
    assert names(status="error") == {"limited", "failed"}
    assert names(status="2xx") == everything - {"limited", "failed"}
    assert names(is_cached=True) == {"cached"}
    assert names(is_cached=False) == everything - {"cached"}
    assert names(flag="flagged") == {"flagged"}
    assert names(flag="open") == {"flagged"}
    assert names(flag="unflagged") == everything - {"flagged"}
    assert names(since=now - timedelta(days=1)) == everything - {"old"}
    assert names(until=now - timedelta(hours=1)) == {"plain", "old"}
    assert names(since=now - timedelta(hours=4), until=now - timedelta(hours=2)) == {"plain"}
    with pytest.raises(InvalidQuery):
        names(status="teapot")
    with pytest.raises(InvalidQuery):
        names(flag="maybe")


def test_pages_cover_every_record_once_newest_first(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    now = datetime.now(UTC)
    # Two records share each timestamp: the id breaks the tie, so none is skipped.
    records = [call_record(owner, at=now - timedelta(minutes=i // 2)) for i in range(11)]
    write_records(records_engine, records)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = search_records(
            records_engine, RecordQuery(tenant_id=owner.tenant_id), page_size=3, cursor=cursor
        )
        pages += 1
        seen += [record.id for record in page.records]
        stamps = [record.created_at for record in page.records]
        assert stamps == sorted(stamps, reverse=True)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 4
    assert sorted(seen) == sorted(record.id for record in records)
    assert len(seen) == len(set(seen))
    expected = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
    assert seen == [record.id for record in expected]


@pytest.mark.parametrize("cursor", ["garbage", "|", "2026-13-45T00:00:00|x"])
def test_a_cursor_not_made_here_is_refused(records_engine: Engine, cursor: str) -> None:
    with pytest.raises(InvalidQuery):
        search_records(records_engine, RecordQuery(), cursor=cursor)


def test_results_carry_names_and_a_preview(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    (record_id,) = write(records_engine, call_record(owner, prompt="  Summarise   this\nplease "))
    (summary,) = search_records(records_engine, RecordQuery(request_id=record_id)).records
    assert summary.tenant == owner.accounts.tenant
    assert summary.user == owner.accounts.user
    assert summary.key is not None and summary.key.startswith("test (")
    assert summary.preview == "Summarise this please"
    assert summary.created_at.tzinfo is not None


def test_session_view_lists_calls_in_order(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    now = datetime.now(UTC)
    session_id = f"s-{owner.tenant_id}"
    later, earlier = write(
        records_engine,
        call_record(owner, at=now, session_id=session_id, prompt="second"),
        call_record(owner, at=now - timedelta(seconds=5), session_id=session_id, prompt="first"),
    )
    assert [r.id for r in session_records(records_engine, session_id)] == [earlier, later]
    assert [r.preview for r in session_records(records_engine, session_id)] == ["first", "second"]


def test_detail_has_bodies_and_replays(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    original = call_record(owner, prompt="what is 2+2", answer="4")
    replay = call_record(owner, replay_of=original.id, prompt="what is 2+2", answer="four")
    write_records(records_engine, [original, replay])
    detail = record_detail(records_engine, original.id)
    assert detail is not None
    assert detail.request_body == chat_body("what is 2+2")
    assert detail.response_body is not None and '"4"' in detail.response_body
    assert [r.id for r in detail.replays] == [replay.id]
    assert record_detail(records_engine, "no-such-record") is None


def test_deleted_records_leave_the_index(records_engine: Engine) -> None:
    owner = fresh_owner(records_engine)
    (record_id,) = write(records_engine, call_record(owner, prompt="ephemeral ocelot"))
    assert found(records_engine, owner, text="ocelot") == {record_id}
    with records_engine.begin() as connection:
        connection.execute(delete(Flag).where(Flag.record_id == record_id))
        connection.execute(delete(RequestRecord).where(RequestRecord.id == record_id))
    assert found(records_engine, owner, text="ocelot") == set()
    rebuild_search_index(records_engine)
    assert found(records_engine, owner, text="ocelot") == set()


def test_postgresql_text_search_uses_the_gin_index(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SET enable_seqscan = off"))
            statement = search_sql(engine, RecordQuery(text="aardvark"))
            plan = "\n".join(row[0] for row in connection.execute(text("EXPLAIN " + statement)))
    finally:
        engine.dispose()
    # On the partitioned log (migration 0005): one GIN index per month, named after it.
    assert re.search(r"Index Scan on \w*search_document", plan), plan


def write_before_0005(engine: Engine, record: CallRecord) -> str:
    """One record as the log took it before migration 0005 (bodies without created_at)."""
    row = record.model_dump(exclude={"request_body", "response_body", "flag_reasons"})
    row["created_at"], row["finished_at"] = as_utc(record.created_at), as_utc(record.finished_at)
    body = {"id": record.id, "request": record.request_body, "response": record.response_body}
    with engine.begin() as connection:
        connection.execute(RequestRecord.__table__.insert(), row)
        connection.execute(
            text(
                "INSERT INTO request_bodies (record_id, request_body, response_body) "
                "VALUES (:id, :request, :response)"
            ),
            body,
        )
    return record.id


def search_sql(engine: Engine, query: RecordQuery) -> str:
    """The search's SQL with its values inlined (for EXPLAIN)."""
    statement = select(RequestRecord.id).where(
        search._text_condition(engine.dialect.name, query.text)
    )
    return str(statement.compile(engine, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_migration_indexes_bodies_written_before_it_and_downgrades(
    database: str, tmp_path: Any
) -> None:
    url = create_pg_database() if database == "postgresql" else f"sqlite:///{tmp_path}/m.db"
    try:
        upgrade(url, "0003")
        engine = make_engine(url)
        owner = fresh_owner(engine)
        before = write_before_0005(engine, call_record(owner, prompt="antediluvian armadillo"))
        upgrade(url)
        assert found(engine, owner, text="armadillo") == {before}
        command.downgrade(alembic_config(url), "0003")
        assert not any(
            name.startswith("request_bodies_fts") for name in inspect(engine).get_table_names()
        )
        upgrade(url)
        assert found(engine, owner, text="armadillo") == {before}
        engine.dispose()
    finally:
        if database == "postgresql":
            drop_pg_database(url)


@pytest.mark.parametrize("cap", [0, 2, search.TEXT_MATCH_CAP])
def test_few_and_many_text_matches_give_the_same_pages(
    records_engine: Engine, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    """Matches up to the cap are fetched by id; past it the newest records are walked."""
    monkeypatch.setattr(search, "TEXT_MATCH_CAP", cap)
    owner = fresh_owner(records_engine)
    now = datetime.now(UTC)
    word = f"walrus{owner.tenant_id}"
    records = [
        call_record(owner, at=now - timedelta(seconds=i), prompt=f"{word} number {i}")
        for i in range(7)
    ]
    write_records(records_engine, [*records, call_record(owner, prompt="no such animal")])
    seen: list[str] = []
    cursor = None
    while True:
        page = search_records(
            records_engine,
            RecordQuery(text=word, tenant_id=owner.tenant_id),
            page_size=3,
            cursor=cursor,
        )
        seen += [record.id for record in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [record.id for record in records]
    assert found(records_engine, owner, text=f"{word} -number") == set()
    assert len(found(records_engine, owner, text="animal")) == 1
