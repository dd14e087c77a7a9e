"""Finding request records: free text (the full-text index of migration 0004) and filters.

``search_records`` answers one page, newest first, with keyset pagination on
``(created_at, id)``: a page costs the same on the thousandth page as on the first,
and records written meanwhile never shift a page. ``session_records`` lists one
session in the order it happened; ``record_detail`` is everything about one record.

Free text is read like a search box: words must all appear (in the prompt or the
answer), ``"quoted words"`` as a phrase, ``-word`` must not appear. Case is ignored;
there is no stemming, so it works the same for every language. The text is never
handed to the database as query syntax: on PostgreSQL it goes through
``websearch_to_tsquery``, on SQLite every term is quoted for FTS5. A query that
cannot be understood raises ``InvalidQuery``. A text search asks the index for its
matches first (``_text_matches``), so a rare word never walks the whole log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    column,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.orm import Session

from shared.conversation import read_conversation
from shared.models import ApiKey, Flag, RequestBody, RequestRecord, Tenant, User

MAX_PAGE_SIZE = 200
MAX_SESSION_RECORDS = 1000
# Up to this many text matches are fetched by id and sorted; past it, the newest records
# are walked and checked (see _text_matches).
TEXT_MATCH_CAP = 5000
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")
FLAG_FILTERS = ("flagged", "unflagged", "open")

# Objects of the full-text index that the models do not describe (migration 0004).
SEARCH_INDEX_TABLES = ("request_bodies_fts",)
SEARCH_INDEX_COLUMNS = ("search_document",)
SEARCH_INDEX_INDEXES = ("ix_request_bodies_search_document",)


class InvalidQuery(ValueError):
    """A search the form should not have sent: the message says what to fix."""


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """What to look for; empty fields do not filter.

    ``request_id`` matches the gateway's record id, the client's ``x-request-id`` or the
    provider's answer id. ``status``: a code (``"429"``), a class (``"2xx"``, ``"4xx"``,
    ``"5xx"``) or ``"error"`` (400 and above). ``flag``: ``"flagged"``, ``"unflagged"``
    or ``"open"`` (an open flag). ``since`` is inclusive, ``until`` exclusive.
    """

    text: str = ""
    request_id: str = ""
    session_id: str = ""
    tenant_id: int | None = None
    user_id: int | None = None
    key_id: int | None = None
    end_user: str = ""
    model: str = ""
    status: str = ""
    flag: str = ""
    is_cached: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """One line of a result list."""

    id: str
    created_at: datetime
    tenant: str | None
    user: str | None
    key: str | None
    endpoint: str
    model: str | None
    status: int
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: float
    is_cached: bool
    is_flagged: bool
    is_stream: bool
    session_id: str | None
    end_user: str | None
    client_request_id: str | None
    replay_of: str | None
    preview: str = ""


@dataclass(frozen=True, slots=True)
class RecordPage:
    """A page of results; ``next_cursor`` is None on the last page."""

    records: list[RecordSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RecordDetail:
    """Everything about one record: its summary, every logged field, its bodies, replays."""

    summary: RecordSummary
    dialect: str
    provider: str | None
    upstream_model: str | None
    answered_model: str | None
    error_message: str | None
    cache_read_tokens: int
    cache_write_tokens: int
    cache_saved_usd: Decimal
    upstream_latency_ms: float | None
    ttft_ms: float | None
    overhead_ms: float | None
    refusal_reason: str | None
    output_valid: bool | None
    response_id: str | None
    upstream_request_id: str | None
    client_ip: str | None
    user_agent: str | None
    attempts: list[dict[str, Any]] | None
    request_body: str | None
    response_body: str | None
    finished_at: datetime
    replays: list[RecordSummary] = field(default_factory=list)


def search_records(
    engine: Engine, query: RecordQuery, *, page_size: int = 50, cursor: str | None = None
) -> RecordPage:
    """One page of the records matching ``query``, newest first.

    ``cursor`` is the ``next_cursor`` of the previous page. Raises ``InvalidQuery``
    for a malformed filter, text without a word in it, or a cursor not made here.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidQuery(f"a page holds 1 to {MAX_PAGE_SIZE} records")
    conditions = _conditions(engine, query)
    if query.text.strip():
        matches = _text_matches(engine, query.text)
        if matches is not None and not matches:
            return RecordPage([], None)
        conditions.append(
            RequestRecord.id.in_(matches)
            if matches is not None
            else _text_condition(engine.dialect.name, query.text)
        )
    if cursor is not None:
        at, record_id = _decode_cursor(cursor)
        conditions.append(
            tuple_(RequestRecord.created_at, RequestRecord.id) < tuple_(at, record_id)
        )
    statement = (
        _summary_select()
        .where(*conditions)
        .order_by(RequestRecord.created_at.desc(), RequestRecord.id.desc())
        .limit(page_size + 1)
    )
    with Session(engine) as session:
        rows = session.execute(statement).all()
        summaries = [_summary(row) for row in rows[:page_size]]
        summaries = _with_previews(session, summaries)
    next_cursor = _encode_cursor(summaries[-1]) if len(rows) > page_size else None
    return RecordPage(summaries, next_cursor)


def session_records(engine: Engine, session_id: str) -> list[RecordSummary]:
    """Every call of one session (the first ``MAX_SESSION_RECORDS``), oldest first."""
    statement = (
        _summary_select()
        .where(RequestRecord.session_id == session_id)
        .order_by(RequestRecord.created_at, RequestRecord.id)
        .limit(MAX_SESSION_RECORDS)
    )
    with Session(engine) as session:
        summaries = [_summary(row) for row in session.execute(statement).all()]
        return _with_previews(session, summaries)


def record_detail(engine: Engine, record_id: str) -> RecordDetail | None:
    """The record with this gateway id, or None."""
    with Session(engine) as session:
        row = session.execute(_summary_select().where(RequestRecord.id == record_id)).first()
        if row is None:
            return None
        record: RequestRecord = row[0]
        body = session.get(RequestBody, record_id)
        replays = session.execute(
            _summary_select()
            .where(RequestRecord.replay_of == record_id)
            .order_by(RequestRecord.created_at)
        ).all()
        return RecordDetail(
            summary=_summary(row),
            dialect=record.dialect,
            provider=record.provider,
            upstream_model=record.upstream_model,
            answered_model=record.answered_model,
            error_message=record.error_message,
            cache_read_tokens=record.cache_read_tokens,
            cache_write_tokens=record.cache_write_tokens,
            cache_saved_usd=record.cache_saved_usd,
            upstream_latency_ms=record.upstream_latency_ms,
            ttft_ms=record.ttft_ms,
            overhead_ms=record.overhead_ms,
            refusal_reason=record.refusal_reason,
            output_valid=record.output_valid,
            response_id=record.response_id,
            upstream_request_id=record.upstream_request_id,
            client_ip=record.client_ip,
            user_agent=record.user_agent,
            attempts=record.attempts,
            request_body=body.request_body if body else None,
            response_body=body.response_body if body else None,
            finished_at=as_utc(record.finished_at),
            replays=[_summary(replay) for replay in replays],
        )


def summaries_of(session: Session, record_ids: Sequence[str]) -> dict[str, RecordSummary]:
    """The summaries (with previews) of these records, by id; missing ones are left out."""
    if not record_ids:
        return {}
    rows = session.execute(_summary_select().where(RequestRecord.id.in_(set(record_ids)))).all()
    return {summary.id: summary for summary in _with_previews(session, [_summary(r) for r in rows])}


def rebuild_search_index(engine: Engine) -> None:
    """Index every body again. SQLite needs it after a ``VACUUM`` (rowids may change);
    PostgreSQL keeps its index in step by itself (a stored generated column)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO request_bodies_fts(request_bodies_fts) VALUES ('delete-all')")
            )
            connection.execute(
                text(
                    "INSERT INTO request_bodies_fts(rowid, request_text, response_text) "
                    "SELECT body_rowid, request_text, response_text "
                    "FROM request_bodies_search_text"
                )
            )


def include_in_autogenerate(name: str | None, type_: str, _parent_names: Any = None) -> bool:
    """Alembic's ``include_name`` hook: everything but the full-text index's own objects,
    which the models do not describe (migration 0004 makes them)."""
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(SEARCH_INDEX_TABLES)
    if type_ == "column":
        return name not in SEARCH_INDEX_COLUMNS
    if type_ == "index":
        return name not in SEARCH_INDEX_INDEXES
    return True


# -- the query ------------------------------------------------------------------------


def _summary_select() -> Select[RequestRecord, str, str, str, str]:
    return (
        select(
            RequestRecord,
            Tenant.name,
            User.email,
            ApiKey.name,
            ApiKey.prefix,
        )
        .outerjoin(Tenant, Tenant.id == RequestRecord.tenant_id)
        .outerjoin(User, User.id == RequestRecord.user_id)
        .outerjoin(ApiKey, ApiKey.id == RequestRecord.key_id)
    )


def _conditions(engine: Engine, query: RecordQuery) -> list[ColumnElement[bool]]:
    record = RequestRecord
    conditions: list[ColumnElement[bool]] = []
    if request_id := query.request_id.strip():
        conditions.append(
            or_(
                record.id == request_id,
                record.client_request_id == request_id,
                record.response_id == request_id,
            )
        )
    exact: Sequence[tuple[Any, Any]] = (
        (record.session_id, query.session_id.strip() or None),
        (record.end_user, query.end_user.strip() or None),
        (record.model, query.model.strip() or None),
        (record.tenant_id, query.tenant_id),
        (record.user_id, query.user_id),
        (record.key_id, query.key_id),
        (record.is_cached, query.is_cached),
    )
    conditions += [column_ == value for column_, value in exact if value is not None]
    if query.status.strip():
        conditions.append(_status_condition(query.status.strip()))
    if query.flag:
        conditions.append(_flag_condition(query.flag))
    if query.since is not None:
        conditions.append(record.created_at >= as_utc(query.since))
    if query.until is not None:
        conditions.append(record.created_at < as_utc(query.until))
    return conditions


def _status_condition(status: str) -> ColumnElement[bool]:
    code = RequestRecord.status
    if status.isdigit() and len(status) == 3:
        return code == int(status)
    if status == "error":
        return code >= 400
    if status in STATUS_CLASSES:
        low = int(status[0]) * 100
        return and_(code >= low, code < low + 100)
    raise InvalidQuery(f"status is a code like 429, one of {', '.join(STATUS_CLASSES)}")


def _flag_condition(flag: str) -> ColumnElement[bool]:
    if flag == "flagged":
        return RequestRecord.is_flagged == true()
    if flag == "unflagged":
        return RequestRecord.is_flagged != true()
    if flag == "open":
        return exists().where(Flag.record_id == RequestRecord.id, Flag.status == "open")
    raise InvalidQuery(f"flag is one of {', '.join(FLAG_FILTERS)}")


# -- free text ------------------------------------------------------------------------

_TERM = re.compile(r'(-?)"([^"]*)"?|(\S+)')


@dataclass(frozen=True, slots=True)
class Term:
    """A word or phrase of a search; ``is_negated``: it must not appear."""

    words: str
    is_negated: bool = False


def parse_text_query(text_: str) -> list[Term]:
    """The terms of a search box's text; raises InvalidQuery when nothing can be searched."""
    terms = []
    for match in _TERM.finditer(text_):
        is_negated, words = bool(match.group(1)), match.group(2)
        if words is None:
            token = match.group(3)
            is_negated, words = token.startswith("-") and len(token) > 1, token
            words = words[1:] if is_negated else words
        words = " ".join(re.findall(r"\w+", words))
        if words:
            terms.append(Term(words, is_negated))
    if not any(not term.is_negated for term in terms):
        raise InvalidQuery("the search text needs at least one word to look for")
    return terms


def _text_matches(engine: Engine, text_: str) -> list[str] | None:
    """The ids of every record whose bodies match, when there are at most
    ``TEXT_MATCH_CAP`` of them; None when there are more.

    Why two steps: the planner cannot tell a rare word from a missing one, so for a rare
    word it walks the newest records one by one hoping to fill a page soon, and reads the
    whole log. Asking the full-text index first settles it: few matches are sorted
    directly; many are dense enough that walking the newest records fills a page at once.
    """
    terms = parse_text_query(text_)
    limit = TEXT_MATCH_CAP + 1
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            matches = select(RequestBody.record_id).where(_pg_matches(terms)).limit(limit)
            ids = list(connection.scalars(matches))
        else:
            rowids = (
                text(
                    "SELECT rowid FROM request_bodies_fts "
                    "WHERE request_bodies_fts MATCH :fts_query LIMIT :fts_limit"
                )
                .bindparams(fts_query=_fts5_query(terms), fts_limit=limit)
                .columns(column("rowid"))
            )
            matches = select(RequestBody.record_id).where(
                literal_column("request_bodies.rowid").in_(rowids)
            )
            ids = list(connection.scalars(matches))
    return ids if len(ids) <= TEXT_MATCH_CAP else None


def _pg_matches(terms: list[Term]) -> ColumnElement[bool]:
    websearch = " ".join(f'{"-" if t.is_negated else ""}"{t.words}"' for t in terms)
    return literal_column("request_bodies.search_document").bool_op("@@")(
        func.websearch_to_tsquery(literal_column("'simple'::regconfig"), websearch)
    )


def _text_condition(dialect: str, text_: str) -> ColumnElement[bool]:
    terms = parse_text_query(text_)
    if dialect == "postgresql":
        return RequestRecord.id.in_(select(RequestBody.record_id).where(_pg_matches(terms)))
    if dialect == "sqlite":
        fts = _fts5_query(terms)
        rowids = (
            text("SELECT rowid FROM request_bodies_fts WHERE request_bodies_fts MATCH :fts_query")
            .bindparams(fts_query=fts)
            .columns(column("rowid"))
        )
        return RequestRecord.id.in_(
            select(RequestBody.record_id).where(literal_column("request_bodies.rowid").in_(rowids))
        )
    raise NotImplementedError(f"no full-text search for database dialect {dialect}")


def _fts5_query(terms: list[Term]) -> str:
    """An FTS5 query of quoted phrases: ``"a" AND "b c" NOT "d"`` (words only, so no
    quote or operator of the user's can reach FTS5's syntax)."""
    wanted = " AND ".join(f'"{t.words}"' for t in terms if not t.is_negated)
    unwanted = "".join(f' NOT "{t.words}"' for t in terms if t.is_negated)
    return wanted + unwanted


# -- rows -----------------------------------------------------------------------------


def _summary(row: Any) -> RecordSummary:
    record: RequestRecord = row[0]
    tenant, user, key_name, key_prefix = row[1], row[2], row[3], row[4]
    key = None
    if key_prefix is not None:
        key = f"{key_name} ({key_prefix}…)" if key_name else f"{key_prefix}…"
    return RecordSummary(
        id=record.id,
        created_at=as_utc(record.created_at),
        tenant=tenant,
        user=user,
        key=key,
        endpoint=record.endpoint,
        model=record.model,
        status=record.status,
        error_code=record.error_code,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cost_usd=record.cost_usd,
        latency_ms=record.latency_ms,
        is_cached=record.is_cached,
        is_flagged=record.is_flagged,
        is_stream=record.is_stream,
        session_id=record.session_id,
        end_user=record.end_user,
        client_request_id=record.client_request_id,
        replay_of=record.replay_of,
    )


def _with_previews(session: Session, summaries: list[RecordSummary]) -> list[RecordSummary]:
    """Each summary with the last thing its user said (one query for the page's bodies)."""
    if not summaries:
        return summaries
    bodies = {
        body.record_id: body
        for body in session.scalars(
            select(RequestBody).where(RequestBody.record_id.in_([s.id for s in summaries]))
        )
    }
    previews = []
    for summary in summaries:
        body = bodies.get(summary.id)
        preview = ""
        if body is not None:
            preview = read_conversation(summary.endpoint, body.request_body, None).preview()
        previews.append(replace(summary, preview=preview))
    return previews


def _encode_cursor(last: RecordSummary) -> str:
    return f"{last.created_at.isoformat()}|{last.id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    at, _, record_id = cursor.partition("|")
    try:
        return as_utc(datetime.fromisoformat(at)), record_id
    except ValueError as exc:
        raise InvalidQuery("that page link is not valid; search again") from exc


def as_utc(at: datetime) -> datetime:
    """SQLite hands datetimes back naive (they are stored in UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
