"""What the console reads, and the one way it writes.

Loaders return pandas frames (or small values) and are cached with
``st.cache_data``. Declare one with ``@loader(ttl_seconds)`` taking the engine
as its first argument; pages call it without the engine::

    @loader(60)
    def tiers(engine: Engine) -> pd.DataFrame: ...

    frame = data.tiers()

The cache is keyed by the database URL too, so tests on different databases
never see each other's rows. Writes go through ``write``: one ``shared/``
function in its own transaction (the function checks the actor's role, announces
the config change and records the audit entry), then the cached config loaders
are cleared so the next run shows the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

import pandas as pd
import streamlit as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared import audit, flags, search
from shared.accounts import get_global_monthly_usd
from shared.console_users import list_console_users, role_includes
from shared.db import make_engine, transaction
from shared.models import ApiKey, ModelPrice, RequestRecord, Tenant, Tier, User
from shared.settings import Settings
from shared.usage import month_of, month_usage

P = ParamSpec("P")
T = TypeVar("T")

CONFIG_TTL_SECONDS = 30
USAGE_TTL_SECONDS = 60
LIMIT_COLUMNS = ["rpm", "tpm", "monthly_tokens", "monthly_usd", "max_tokens", "cache_ttl_seconds"]

_config_loaders: list[Any] = []


def settings() -> Settings:
    """The deployment's settings (read from the environment on each run: cheap)."""
    return Settings()


def database_url() -> str:
    return settings().effective_database_url


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return make_engine(url)


def engine() -> Engine:
    """The process-wide engine for the configured database."""
    return _engine(database_url())


@contextmanager
def transaction_session() -> Iterator[Session]:
    """A session on the console's engine that commits on success (for sign-in)."""
    with transaction(engine()) as session:
        yield session


def loader(
    ttl_seconds: float, *, is_config: bool = False
) -> Callable[[Callable[Concatenate[Engine, P], T]], Callable[P, T]]:
    """Cache a loader per database URL and arguments for ``ttl_seconds``.

    ``is_config``: cleared by every console write (lists of tiers, keys, prices …).
    """

    def wrap(load: Callable[Concatenate[Engine, P], T]) -> Callable[P, T]:
        def run(url: str, *args: Any, **kwargs: Any) -> T:
            return load(_engine(url), *args, **kwargs)

        # st.cache_data tells functions apart by module and qualified name: give each its own.
        run.__module__ = load.__module__
        run.__qualname__ = run.__name__ = f"{load.__qualname__}__cached"
        cached = st.cache_data(ttl=ttl_seconds, show_spinner=False)(run)

        @wraps(load)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return cached(database_url(), *args, **kwargs)

        call.clear = cached.clear  # type: ignore[attr-defined]
        if is_config:
            _config_loaders.append(cached)
        return call

    return wrap


def write(action: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one ``shared/`` write in its own transaction, then refresh the config loaders.

    Raises what the write raises (``PermissionDenied``, ``AccountError``), with nothing
    committed.
    """
    with transaction(engine()) as session:
        result = action(session, *args, **kwargs)
    refresh_config()
    return result


def refresh_config() -> None:
    for cached in _config_loaders:
        cached.clear()


def this_month() -> str:
    return month_of(datetime.now(UTC))


# -- config: tiers, tenants, users, keys, prices ----------------------------------------


@loader(CONFIG_TTL_SECONDS, is_config=True)
def tiers(engine: Engine) -> pd.DataFrame:
    """One row per tier: its limits and policy, and how many users it has."""
    with Session(engine) as session:
        users = dict(
            session.execute(select(User.tier_id, func.count()).group_by(User.tier_id)).all()
        )
        rows = [
            {
                **audit.snapshot(tier, audit.TIER_FIELDS),
                "moderation": tier.moderation_action or "off",
                "users": users.get(tier.id, 0),
            }
            for tier in session.scalars(select(Tier).order_by(Tier.name))
        ]
    return _frame(rows, ["name", *LIMIT_COLUMNS, "models", "max_prompt_tokens", "users"])


@loader(CONFIG_TTL_SECONDS, is_config=True)
def model_names(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(ModelPrice.name).order_by(ModelPrice.name)))


@loader(CONFIG_TTL_SECONDS, is_config=True)
def prices(engine: Engine) -> pd.DataFrame:
    with Session(engine) as session:
        rows = [
            {c: getattr(m, c) for c in (*audit.PRICE_FIELDS, "updated_at")}
            for m in session.scalars(
                select(ModelPrice).order_by(ModelPrice.provider, ModelPrice.name)
            )
        ]
    frame = _frame(rows, [*audit.PRICE_FIELDS, "updated_at"])
    for column in ("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok"):
        frame[column] = frame[column].astype(float)
    frame["output_per_mtok"] = frame["output_per_mtok"].astype(float)
    return frame


@loader(CONFIG_TTL_SECONDS, is_config=True)
def users(engine: Engine) -> pd.DataFrame:
    """One row per user: tenant, tier, its own overrides (``None``: the tier's) and ids."""
    with Session(engine) as session:
        query = (
            select(User, Tenant.name, Tier.name)
            .join(Tenant, User.tenant_id == Tenant.id)
            .join(Tier, User.tier_id == Tier.id)
            .order_by(User.email)
        )
        rows = [
            {
                "id": user.id,
                "email": user.email,
                "tenant": tenant,
                "tier": tier,
                **{c: getattr(user, c) for c in (*LIMIT_COLUMNS, "models")},
            }
            for user, tenant, tier in session.execute(query)
        ]
    return _frame(rows, ["id", "email", "tenant", "tier", *LIMIT_COLUMNS, "models"])


@loader(CONFIG_TTL_SECONDS, is_config=True)
def tenants(engine: Engine) -> pd.DataFrame:
    with Session(engine) as session:
        counts = dict(
            session.execute(select(User.tenant_id, func.count()).group_by(User.tenant_id)).all()
        )
        rows = [
            {
                "id": t.id,
                "name": t.name,
                "monthly_usd": t.monthly_usd,
                "users": counts.get(t.id, 0),
                "body_storage": t.body_storage,
            }
            for t in session.scalars(select(Tenant).order_by(Tenant.name))
        ]
    return _frame(rows, ["id", "name", "monthly_usd", "users", "body_storage"])


@loader(CONFIG_TTL_SECONDS, is_config=True)
def keys(engine: Engine) -> pd.DataFrame:
    """Every key (never a secret): owner, labels, overrides, state and last use."""
    with Session(engine) as session:
        last_used = dict(
            session.execute(
                select(RequestRecord.key_id, func.max(RequestRecord.created_at))
                .where(RequestRecord.key_id.is_not(None))
                .group_by(RequestRecord.key_id)
            ).all()
        )
        tier_names = dict(session.execute(select(Tier.id, Tier.name)).all())
        query = (
            select(ApiKey, User.email, Tenant.name)
            .join(User, ApiKey.user_id == User.id)
            .join(Tenant, User.tenant_id == Tenant.id)
            .order_by(ApiKey.id)
        )
        now = datetime.now(UTC)
        rows = [
            {
                "id": key.id,
                "prefix": key.prefix + "…",
                "name": key.name,
                "user": email,
                "tenant": tenant,
                "environment": key.environment,
                "state": _key_state(key, now),
                "created_at": key.created_at,
                "expires_at": key.expires_at,
                "revoked_at": key.revoked_at,
                "last_used_at": last_used.get(key.id),
                "end_user_tier": tier_names.get(key.end_user_tier_id or -1),
                **{c: getattr(key, c) for c in (*LIMIT_COLUMNS, "models")},
            }
            for key, email, tenant in session.execute(query)
        ]
    columns = ["id", "prefix", "name", "user", "tenant", "environment", "state", "created_at"]
    columns += ["expires_at", "revoked_at", "last_used_at", "end_user_tier", *LIMIT_COLUMNS]
    return _frame(rows, [*columns, "models"])


def _key_state(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    expires_at = key.expires_at
    if expires_at is not None:
        expires_at = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            return "expired"
    return "active"


@loader(CONFIG_TTL_SECONDS, is_config=True)
def global_cap(engine: Engine) -> float | None:
    with Session(engine) as session:
        cap = get_global_monthly_usd(session)
    return None if cap is None else float(cap)


# -- usage against quotas ---------------------------------------------------------------


@loader(USAGE_TTL_SECONDS)
def month_spend(engine: Engine, month: str) -> dict[str, pd.DataFrame]:
    """The month's tokens and USD (cache hits excluded) per user, key and tenant, and in total.

    Keys of the result: ``"users"``, ``"keys"``, ``"tenants"`` (indexed by id, columns
    ``tokens`` and ``usd``) and ``"total"`` (one row).
    """
    usage = month_usage(engine, month)

    def spent(rows: dict[int, Any]) -> pd.DataFrame:
        frame = pd.DataFrame(
            [{"id": i, "tokens": s.tokens, "usd": float(s.usd)} for i, s in rows.items()],
            columns=["id", "tokens", "usd"],
        )
        return frame.set_index("id")

    total = pd.DataFrame([{"tokens": usage.total.tokens, "usd": float(usage.total.usd)}])
    return {
        "users": spent(usage.users),
        "keys": spent(usage.keys),
        "tenants": spent(usage.tenants),
        "total": total,
    }


# -- the audit log ----------------------------------------------------------------------


@loader(5, is_config=True)
def audit_log(engine: Engine, where: audit.AuditFilter) -> pd.DataFrame:
    with Session(engine) as session:
        rows = [
            {
                "id": e.id,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "target": f"{e.target_type} {e.target_id or ''}".strip(),
                "changed": ", ".join(audit.changed_fields(e.before, e.after)),
                "before": e.before,
                "after": e.after,
            }
            for e in audit.entries(session, where)
        ]
    return _frame(rows, ["id", "at", "actor", "action", "target", "changed", "before", "after"])


@loader(CONFIG_TTL_SECONDS, is_config=True)
def audit_actors(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return sorted(audit.actors(session))


@loader(CONFIG_TTL_SECONDS, is_config=True)
def audit_target_types(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return sorted(audit.target_types(session))


# -- conversations and flags (support) --------------------------------------------------
# Cleared by every console write (a flag changes what a search or a detail shows).

RECORDS_TTL_SECONDS = 5


@loader(RECORDS_TTL_SECONDS, is_config=True)
def record_page(
    engine: Engine, query: search.RecordQuery, cursor: str | None, page_size: int
) -> search.RecordPage:
    """One page of a record search (``search.InvalidQuery`` for a malformed one)."""
    return search.search_records(engine, query, page_size=page_size, cursor=cursor)


@loader(RECORDS_TTL_SECONDS, is_config=True)
def record_detail(engine: Engine, record_id: str) -> search.RecordDetail | None:
    return search.record_detail(engine, record_id)


@loader(RECORDS_TTL_SECONDS, is_config=True)
def session_calls(engine: Engine, session_id: str) -> list[search.RecordSummary]:
    return search.session_records(engine, session_id)


@loader(RECORDS_TTL_SECONDS, is_config=True)
def record_flags(engine: Engine, record_id: str) -> list[flags.FlagView]:
    with Session(engine) as session:
        return flags.record_flags(session, record_id)


@loader(RECORDS_TTL_SECONDS, is_config=True)
def flag_queue(engine: Engine, query: flags.FlagQuery) -> list[flags.FlagView]:
    with Session(engine) as session:
        return flags.flag_queue(session, query)


@loader(RECORDS_TTL_SECONDS, is_config=True)
def flag_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return flags.flag_counts(session)


@loader(CONFIG_TTL_SECONDS, is_config=True)
def support_people(engine: Engine) -> list[str]:
    """Console users a flag can be assigned to (support role or above, not disabled)."""
    with Session(engine) as session:
        return [
            user.name
            for user in list_console_users(session)
            if not user.is_disabled and role_includes(user.role, "support")
        ]


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A frame with at least ``columns`` (so an empty table still has its headers)."""
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    return frame
