"""Feedback from apps on their answers: a score per record, and a flag when it is low.

Scores run from 0 (useless) to 1 (perfect). A score below the deployment's threshold
(``METERGATE_FEEDBACK_FLAG_BELOW``) flags the record for support, once, with the
reason ``low_feedback``; every score is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from shared.accounts import now_utc
from shared.db import transaction
from shared.models import Feedback, Flag, RequestRecord
from shared.records import _insert as insert_ignoring_duplicates

LOW_FEEDBACK = "low_feedback"
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class SavedFeedback:
    id: int
    record_id: str
    is_flagged: bool  # this score flagged the record (or found it flagged for low feedback)


def find_record_id(engine: Engine, tenant_id: int, request_id: str) -> str | None:
    """The tenant's record named by ``request_id``: the gateway's record id, or the
    client's own ``x-request-id`` (its latest call with that id). None if the tenant has
    no such record (another tenant's records are never found)."""
    query = (
        select(RequestRecord.id)
        .where(RequestRecord.tenant_id == tenant_id)
        .where(or_(RequestRecord.id == request_id, RequestRecord.client_request_id == request_id))
        .order_by(RequestRecord.created_at.desc())
        .limit(1)
    )
    with Session(engine) as session:
        return session.scalar(query)


def save_feedback(
    engine: Engine,
    record_id: str,
    *,
    key_id: int | None,
    score: float,
    comment: str | None,
    flag_below: float,
) -> SavedFeedback:
    """Store one score (in one transaction with the flag it raises, if any).

    Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot take it; nothing
    is stored then, and the caller tells the app to send it again.
    """
    now = now_utc()
    with transaction(engine) as session:
        row = Feedback(
            record_id=record_id, key_id=key_id, score=score, comment=comment, created_at=now
        )
        session.add(row)
        session.flush()
        is_low = score < flag_below
        if is_low:
            _flag(engine, session, record_id, score, comment)
        return SavedFeedback(row.id, record_id, is_low)


def _flag(
    engine: Engine, session: Session, record_id: str, score: float, comment: str | None
) -> None:
    """Flag the record for support; one low_feedback flag per record (an earlier one stands)."""
    note = f"score {score:g}" + (f": {comment}" if comment else "")
    now = now_utc()
    flag = {
        "record_id": record_id,
        "source": "auto",
        "reason": LOW_FEEDBACK,
        "note": note[:MAX_NOTE_CHARS],
        "status": "open",
        "created_at": now,
        "updated_at": now,
    }
    session.execute(insert_ignoring_duplicates(engine, Flag.__table__), [flag])
    session.execute(
        update(RequestRecord).where(RequestRecord.id == record_id).values(is_flagged=True)
    )
