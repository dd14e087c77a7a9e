"""Flags: support's writes are role-checked and audited; the queue lists them with records."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared import flags
from shared.console_users import Actor, PermissionDenied, create_console_user
from shared.db import transaction
from shared.flags import FlagError, FlagQuery
from shared.models import AuditEntry, Flag, RequestRecord
from tests.shared.conversation_records import call_record, fresh_owner, write


def person(engine: Engine, role: str) -> Actor:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    with transaction(engine) as session:
        create_console_user(session, name, role)  # no password: no slow argon2 hash
    return Actor(name, role)


def audit_of(engine: Engine, flag_id: int) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.target_type == "flag", AuditEntry.target_id == str(flag_id))
                .order_by(AuditEntry.id)
            )
        )


def is_flagged(engine: Engine, record_id: str) -> bool:
    with Session(engine) as session:
        record = session.get(RequestRecord, record_id)
        assert record is not None
        return record.is_flagged


def test_flagging_a_record_marks_it_and_is_audited(records_engine: Engine) -> None:
    support = person(records_engine, "support")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with transaction(records_engine) as session:
        flag = flags.flag_record(session, support, record_id, "  wrong   answer ", "said 5")
    assert (flag.reason, flag.note, flag.source, flag.status) == (
        "wrong answer",
        "said 5",
        "manual",
        "open",
    )
    assert flag.created_by == support.name
    assert is_flagged(records_engine, record_id)
    (entry,) = audit_of(records_engine, flag.id)
    assert (entry.actor, entry.action, entry.before) == (support.name, "flag.create", None)
    assert entry.after == {
        "record_id": record_id,
        "source": "manual",
        "reason": "wrong answer",
        "note": "said 5",
        "status": "open",
        "assignee": None,
    }


def test_the_life_of_a_flag_each_step_audited(records_engine: Engine) -> None:
    support, colleague = person(records_engine, "support"), person(records_engine, "admin")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with transaction(records_engine) as session:
        flag_id = flags.flag_record(session, support, record_id, "customer complaint").id
    with transaction(records_engine) as session:
        flags.assign_flag(session, support, flag_id, colleague.name)
        flags.set_note(session, colleague, flag_id, "looking into it")
    with transaction(records_engine) as session:
        flags.resolve_flag(session, colleague, flag_id, "refunded")
    with transaction(records_engine) as session:
        flags.reopen_flag(session, support, flag_id)
        flag = session.get(Flag, flag_id)
        assert flag is not None
        assert (flag.status, flag.assignee, flag.note) == ("open", colleague.name, "refunded")
    with transaction(records_engine) as session:
        flags.unflag(session, support, flag_id)
    assert not is_flagged(records_engine, record_id)
    entries = audit_of(records_engine, flag_id)
    assert [e.action for e in entries] == [
        "flag.create",
        "flag.assign",
        "flag.note",
        "flag.resolve",
        "flag.reopen",
        "flag.delete",
    ]
    assert [e.actor for e in entries][3] == colleague.name
    resolve = entries[3]
    assert resolve.before is not None and resolve.after is not None
    assert (resolve.before["status"], resolve.after["status"]) == ("open", "resolved")
    assert (resolve.before["note"], resolve.after["note"]) == ("looking into it", "refunded")
    assert entries[-1].after is None and entries[-1].before is not None


def test_a_record_stays_flagged_while_another_flag_remains(records_engine: Engine) -> None:
    support = person(records_engine, "support")
    record = call_record(fresh_owner(records_engine), flag_reasons=["screening: secrets"])
    write(records_engine, record)
    with transaction(records_engine) as session:
        manual = flags.flag_record(session, support, record.id, "wrong answer").id
        reasons = [f.reason for f in flags.record_flags(session, record.id)]
    assert sorted(reasons) == ["screening: secrets", "wrong answer"]
    with transaction(records_engine) as session:
        flags.unflag(session, support, manual)
    assert is_flagged(records_engine, record.id)


def test_flagging_again_for_the_same_reason_reopens_the_flag(records_engine: Engine) -> None:
    support = person(records_engine, "support")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with transaction(records_engine) as session:
        first = flags.flag_record(session, support, record_id, "other", "one").id
        flags.resolve_flag(session, support, first)
    with transaction(records_engine) as session:
        again = flags.flag_record(session, support, record_id, "other", "two")
        assert (again.id, again.status, again.note) == (first, "open", "two")
    assert [e.action for e in audit_of(records_engine, first)][-1] == "flag.update"


@pytest.mark.parametrize(
    "write_flag",
    [
        lambda s, a, r, f: flags.flag_record(s, a, r, "wrong answer"),
        lambda s, a, r, f: flags.unflag(s, a, f),
        lambda s, a, r, f: flags.assign_flag(s, a, f, None),
        lambda s, a, r, f: flags.resolve_flag(s, a, f),
        lambda s, a, r, f: flags.set_note(s, a, f, "x"),
    ],
    ids=["flag", "unflag", "assign", "resolve", "note"],
)
def test_a_viewer_may_not_change_flags(records_engine: Engine, write_flag: object) -> None:
    support, viewer = person(records_engine, "support"), person(records_engine, "viewer")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with transaction(records_engine) as session:
        flag_id = flags.flag_record(session, support, record_id, "other").id
    with pytest.raises(PermissionDenied), transaction(records_engine) as session:
        write_flag(session, viewer, record_id, flag_id)  # type: ignore[operator]
    assert [e.action for e in audit_of(records_engine, flag_id)] == ["flag.create"]
    with Session(records_engine) as session:
        flag = session.get(Flag, flag_id)
        assert flag is not None and (flag.status, flag.note) == ("open", None)


@pytest.mark.parametrize(
    ("reason", "note", "message"),
    [
        ("   ", None, "needs a reason"),
        ("x" * 201, None, "at most 200"),
        ("other", "x" * 5001, "at most 5000"),
    ],
)
def test_flags_that_do_not_validate_change_nothing(
    records_engine: Engine, reason: str, note: str | None, message: str
) -> None:
    support = person(records_engine, "support")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with pytest.raises(FlagError, match=message), transaction(records_engine) as session:
        flags.flag_record(session, support, record_id, reason, note)
    assert not is_flagged(records_engine, record_id)


def test_unknown_records_flags_and_assignees_are_refused(records_engine: Engine) -> None:
    support, viewer = person(records_engine, "support"), person(records_engine, "viewer")
    (record_id,) = write(records_engine, call_record(fresh_owner(records_engine)))
    with transaction(records_engine) as session:
        flag_id = flags.flag_record(session, support, record_id, "other").id
    refusals = [
        lambda s: flags.flag_record(s, support, str(uuid.uuid4()), "other"),
        lambda s: flags.resolve_flag(s, support, 10**9),
        lambda s: flags.assign_flag(s, support, flag_id, viewer.name),
        lambda s: flags.assign_flag(s, support, flag_id, "nobody-by-this-name"),
        lambda s: flags.reopen_flag(s, support, flag_id),
    ]
    for refuse in refusals:
        with pytest.raises(FlagError), transaction(records_engine) as session:
            refuse(session)


def test_the_queue_lists_automatic_and_manual_flags_with_their_records(
    records_engine: Engine,
) -> None:
    support = person(records_engine, "support")
    owner = fresh_owner(records_engine)
    auto = call_record(owner, status=502, flag_reasons=["upstream_error"], prompt="broken call")
    manual = call_record(owner, prompt="rude answer")
    write(records_engine, auto, manual)
    with transaction(records_engine) as session:
        manual_flag = flags.flag_record(session, support, manual.id, f"rude {owner.tenant_id}")
        flags.assign_flag(session, support, manual_flag.id, support.name)
        manual_flag_id = manual_flag.id
    with Session(records_engine) as session:
        mine = flags.flag_queue(session, FlagQuery(assignee=support.name))
        assert [f.id for f in mine] == [manual_flag_id]
        assert mine[0].record is not None and mine[0].record.preview == "rude answer"
        upstream = flags.flag_queue(session, FlagQuery(source="auto", reason="UPSTREAM_err"))
        assert auto.id in [f.record_id for f in upstream]
        assert all(f.source == "auto" and f.status == "open" for f in upstream)
        by_reason = flags.flag_queue(session, FlagQuery(reason=f"rude {owner.tenant_id}"))
        assert [f.record_id for f in by_reason] == [manual.id]
        assert flags.flag_queue(session, FlagQuery(status="resolved", reason="rude")) == []
        assert manual.id not in [
            f.record_id for f in flags.flag_queue(session, FlagQuery(assignee="-", limit=500))
        ]
        counts = flags.flag_counts(session)
        assert counts["open"] >= 2 and "resolved" in counts
    with pytest.raises(FlagError), Session(records_engine) as session:
        flags.flag_queue(session, FlagQuery(status="closed"))
