"""Flags: records marked for support, and the work on them.

A flag is automatic (the proxy writes it with the record: ``screening: <rule>``,
``moderation: …``, ``invalid_output``, ``upstream_error``, ``low_feedback``) or
manual (a person flags a record with a reason and a note). One record has at most
one flag per reason. A flag is ``open`` until someone resolves it; it can be
assigned to a console user with the support role, and carries a note.

Every write takes the acting ``Actor``, checks the support role
(``PermissionDenied``), validates (``FlagError``, a sentence for the person) and
records an audit entry (``flag.create`` / ``update`` / ``assign`` / ``resolve`` /
``reopen`` / ``note`` / ``delete``) in the caller's transaction. A record's
``is_flagged`` holds while it has any flag, open or resolved; unflagging deletes
the flag (the audit entry keeps what it was).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import audit
from shared.accounts import AccountError, now_utc
from shared.console_users import Actor, find_console_user, require_role, role_includes
from shared.models import Flag, RequestRecord
from shared.search import RecordSummary, as_utc, summaries_of

SUPPORT = "support"
OPEN = "open"
RESOLVED = "resolved"
STATUSES = (OPEN, RESOLVED)
SOURCES = ("auto", "manual")
FLAG_FIELDS = ("record_id", "source", "reason", "note", "status", "assignee")
MAX_REASON_CHARS = 200
MAX_NOTE_CHARS = 5000
# Offered by the console; any other reason may be typed.
MANUAL_REASONS = (
    "wrong answer",
    "harmful or unsafe",
    "customer complaint",
    "leaked personal data",
    "prompt injection",
    "other",
)


class FlagError(AccountError):
    """A flag change that cannot be done as asked (shown to the person like any refusal)."""


@dataclass(frozen=True, slots=True)
class FlagView:
    """A flag as the console shows it; ``record`` is None when its record is gone."""

    id: int
    record_id: str
    source: str
    reason: str
    note: str | None
    status: str
    assignee: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    record: RecordSummary | None = None


@dataclass(frozen=True, slots=True)
class FlagQuery:
    """Which flags to list; empty fields do not filter. ``assignee="-"``: unassigned."""

    status: str = OPEN
    source: str = ""
    reason: str = ""
    assignee: str = ""
    limit: int = 50
    offset: int = 0


# -- writes ---------------------------------------------------------------------------


def flag_record(
    session: Session, actor: Actor, record_id: str, reason: str, note: str | None = None
) -> Flag:
    """Flag a record by hand. Flagging it again for the same reason reopens that flag and
    sets its note."""
    require_role(actor, SUPPORT)
    reason = _reason(reason)
    note = _note(note)
    record = session.get(RequestRecord, record_id)
    if record is None:
        raise FlagError(f"there is no record {record_id}")
    flag = session.scalar(select(Flag).where(Flag.record_id == record_id, Flag.reason == reason))
    if flag is not None:
        before = _snapshot(flag)
        flag.status, flag.note, flag.updated_at = OPEN, note or flag.note, now_utc()
        _audit(session, actor, "flag.update", flag, before)
        return flag
    now = now_utc()
    flag = Flag(
        record_id=record_id,
        source="manual",
        reason=reason,
        note=note,
        status=OPEN,
        created_by=actor.name,
        created_at=now,
        updated_at=now,
    )
    session.add(flag)
    try:
        session.flush()
    except IntegrityError as exc:  # someone flagged it for this reason a moment ago
        raise FlagError(f"{record_id} was just flagged {reason!r}; reload and try again") from exc
    record.is_flagged = True
    _audit(session, actor, "flag.create", flag, None)
    return flag


def unflag(session: Session, actor: Actor, flag_id: int) -> str:
    """Remove a flag (a mistaken one); the record stays flagged while it has others.
    Returns the record's id."""
    require_role(actor, SUPPORT)
    flag = _get(session, flag_id)
    before = _snapshot(flag)
    session.delete(flag)
    session.flush()
    still_flagged = session.scalar(select(exists().where(Flag.record_id == flag.record_id)))
    record = session.get(RequestRecord, flag.record_id)
    if record is not None:
        record.is_flagged = bool(still_flagged)
    audit.record(session, actor, "flag.delete", "flag", flag_id, before=before)
    return flag.record_id


def assign_flag(session: Session, actor: Actor, flag_id: int, assignee: str | None) -> Flag:
    """Give the flag to a console user with the support role (None: to nobody)."""
    require_role(actor, SUPPORT)
    flag = _get(session, flag_id)
    if assignee is not None:
        assignee = assignee.strip()
        person = find_console_user(session, assignee)
        if person is None or person.is_disabled or not role_includes(person.role, SUPPORT):
            raise FlagError(f"{assignee!r} is not a console user with the support role")
    return _change(session, actor, flag, "flag.assign", assignee=assignee)


def resolve_flag(session: Session, actor: Actor, flag_id: int, note: str | None = None) -> Flag:
    """Close a flag; a note given replaces the flag's note (what was done)."""
    require_role(actor, SUPPORT)
    flag = _get(session, flag_id)
    if flag.status == RESOLVED:
        raise FlagError(f"flag {flag_id} is already resolved")
    note = _note(note)
    return _change(session, actor, flag, "flag.resolve", status=RESOLVED, note=note or flag.note)


def reopen_flag(session: Session, actor: Actor, flag_id: int) -> Flag:
    require_role(actor, SUPPORT)
    flag = _get(session, flag_id)
    if flag.status == OPEN:
        raise FlagError(f"flag {flag_id} is already open")
    return _change(session, actor, flag, "flag.reopen", status=OPEN)


def set_note(session: Session, actor: Actor, flag_id: int, note: str | None) -> Flag:
    require_role(actor, SUPPORT)
    flag = _get(session, flag_id)
    return _change(session, actor, flag, "flag.note", note=_note(note))


# -- reads ----------------------------------------------------------------------------


def record_flags(session: Session, record_id: str) -> list[FlagView]:
    """The flags of one record, open ones first."""
    flags = session.scalars(
        select(Flag)
        .where(Flag.record_id == record_id)
        .order_by(Flag.status, Flag.created_at, Flag.id)
    )
    return [_view(flag, None) for flag in flags]


def flag_queue(session: Session, query: FlagQuery) -> list[FlagView]:
    """Flags matching ``query``, newest first, each with its record's summary."""
    if query.status and query.status not in STATUSES:
        raise FlagError(f"status is one of {', '.join(STATUSES)}")
    if query.source and query.source not in SOURCES:
        raise FlagError(f"source is one of {', '.join(SOURCES)}")
    statement = select(Flag).order_by(Flag.created_at.desc(), Flag.id.desc())
    if query.status:
        statement = statement.where(Flag.status == query.status)
    if query.source:
        statement = statement.where(Flag.source == query.source)
    if query.reason.strip():
        pattern = query.reason.strip().lower()
        statement = statement.where(func.lower(Flag.reason).contains(pattern, autoescape=True))
    if query.assignee == "-":
        statement = statement.where(Flag.assignee.is_(None))
    elif query.assignee:
        statement = statement.where(Flag.assignee == query.assignee)
    flags = list(session.scalars(statement.limit(query.limit).offset(query.offset)))
    records = summaries_of(session, [flag.record_id for flag in flags])
    return [_view(flag, records.get(flag.record_id)) for flag in flags]


def flag_counts(session: Session) -> dict[str, int]:
    """How many flags are open and resolved."""
    rows = session.execute(select(Flag.status, func.count()).group_by(Flag.status)).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({status: int(count) for status, count in rows})
    return counts


# -- internals ------------------------------------------------------------------------


def _get(session: Session, flag_id: int) -> Flag:
    flag = session.get(Flag, flag_id)
    if flag is None:
        raise FlagError(f"there is no flag {flag_id} (it may have been removed)")
    return flag


def _change(session: Session, actor: Actor, flag: Flag, action: str, **values: object) -> Flag:
    before = _snapshot(flag)
    for name, value in values.items():
        setattr(flag, name, value)
    flag.updated_at = now_utc()
    _audit(session, actor, action, flag, before)
    return flag


def _audit(
    session: Session, actor: Actor, action: str, flag: Flag, before: dict[str, object] | None
) -> None:
    audit.record(session, actor, action, "flag", flag.id, before=before, after=_snapshot(flag))


def _snapshot(flag: Flag) -> dict[str, object]:
    return audit.snapshot(flag, FLAG_FIELDS)


def _reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise FlagError("a flag needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise FlagError(f"a reason is at most {MAX_REASON_CHARS} characters")
    return reason


def _note(note: str | None) -> str | None:
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise FlagError(f"a note is at most {MAX_NOTE_CHARS} characters")
    return note


def _view(flag: Flag, record: RecordSummary | None) -> FlagView:
    return FlagView(
        id=flag.id,
        record_id=flag.record_id,
        source=flag.source,
        reason=flag.reason,
        note=flag.note,
        status=flag.status,
        assignee=flag.assignee,
        created_by=flag.created_by,
        created_at=as_utc(flag.created_at),
        updated_at=as_utc(flag.updated_at),
        record=record,
    )
