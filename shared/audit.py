"""The audit log: who changed what, when, before -> after.

Every console write records one entry in the same transaction as the change,
so a change and its entry land together or not at all::

    with transaction(engine) as session:
        require_role(actor, "admin")
        before = audit.snapshot(tier, audit.TIER_FIELDS)
        ...change the tier...
        audit.record(session, actor, "tier.update", "tier", tier.name,
                     before=before, after=audit.snapshot(tier, audit.TIER_FIELDS))

``before`` and ``after`` are made JSON-safe here (``Decimal`` -> string,
``datetime`` -> ISO 8601), so callers can pass column values as they are.
Never put a secret in them: a key is named by its id and display prefix only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.accounts import now_utc
from shared.console_users import Actor
from shared.models import AuditEntry

LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "monthly_tokens",
    "monthly_usd",
    "max_tokens",
    "cache_ttl_seconds",
    "models",
)
TIER_FIELDS = (
    "name",
    *LIMIT_FIELDS,
    "max_prompt_tokens",
    "moderation_action",
    "is_prompt_cache_marked",
)
KEY_FIELDS = (
    "id",
    "prefix",
    "name",
    "environment",
    "expires_at",
    "revoked_at",
    "end_user_tier_id",
    *LIMIT_FIELDS,
)
PRICE_FIELDS = (
    "name",
    "provider",
    "upstream_model",
    "input_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "output_per_mtok",
    "fallbacks",
)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to show of the log; ``None`` fields do not filter."""

    actor: str | None = None
    action_prefix: str | None = None
    target_type: str | None = None
    since: datetime | None = None
    limit: int = 500


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: Decimals as strings, datetimes in ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def snapshot(row: object, names: Iterable[str]) -> dict[str, Any]:
    """The named attributes of ``row``, JSON-safe: a ``before`` or ``after`` value."""
    return {name: jsonable(getattr(row, name)) for name in names}


def record(
    session: Session,
    actor: Actor | str,
    action: str,
    target_type: str,
    target_id: str | int | None = None,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry to the log in ``session``'s transaction (committed with the change).

    ``action`` is ``"<thing>.<verb>"`` (``"tier.update"``, ``"key.revoke"``,
    ``"flag.create"``); ``target_type`` / ``target_id`` name what changed.
    """
    entry = AuditEntry(
        at=now_utc(),
        actor=actor.name if isinstance(actor, Actor) else actor,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:200],  # the column's length
        before=None if before is None else jsonable(dict(before)),
        after=None if after is None else jsonable(dict(after)),
    )
    session.add(entry)
    session.flush()
    return entry


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Names whose value differs between ``before`` and ``after`` (a creation: every name)."""
    before, after = before or {}, after or {}
    return [name for name in {**before, **after} if before.get(name) != after.get(name)]


def entries(session: Session, where: AuditFilter | None = None) -> list[AuditEntry]:
    """The newest entries first, filtered."""
    where = where or AuditFilter()
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if where.actor:
        query = query.where(AuditEntry.actor == where.actor)
    if where.action_prefix:
        query = query.where(AuditEntry.action.startswith(where.action_prefix, autoescape=True))
    if where.target_type:
        query = query.where(AuditEntry.target_type == where.target_type)
    if where.since is not None:
        query = query.where(AuditEntry.at >= where.since)
    return list(session.scalars(query.limit(where.limit)))


def actors(session: Session) -> list[str]:
    """Everyone who has an entry in the log."""
    return list(session.scalars(select(AuditEntry.actor).distinct()))


def target_types(session: Session) -> list[str]:
    """Every kind of thing the log has an entry about."""
    return list(session.scalars(select(AuditEntry.target_type).distinct()))
