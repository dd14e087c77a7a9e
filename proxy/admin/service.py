"""What each admin operation reads and writes.

Writes go through ``shared.admin`` as the actor ``admin-api``: it validates, writes
through ``shared.accounts`` (which announces the change, so every proxy process picks
it up within ``METERGATE_CONFIG_POLL_SECONDS``) and adds an audit entry, all in one
transaction. Reads are plain queries. An id that names nothing is a 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from proxy.admin import schemas as s
from proxy.errors import NotFound
from shared import admin
from shared.accounts import Limits, TierPolicy, get_global_monthly_usd
from shared.console_users import Actor
from shared.db import transaction
from shared.models import (
    ApiKey,
    Feedback,
    Flag,
    ModelPrice,
    RequestBody,
    RequestRecord,
    Tenant,
    Tier,
    User,
)
from shared.usage import Spent, month_of, month_usage

ACTOR = Actor("admin-api", "admin")
Row = TypeVar("Row", Tenant, Tier, User, ApiKey)
NAMES: dict[type[Tenant | Tier | User | ApiKey], str] = {
    Tenant: "tenant",
    Tier: "tier",
    User: "user",
    ApiKey: "key",
}


def _get(session: Session, model: type[Row], row_id: int) -> Row:
    row = session.get(model, row_id)
    if row is None:
        what = NAMES[model]
        raise NotFound(f"No {what} with id {row_id}.", code=f"{what}_not_found")
    return row


def _limits(body: s.LimitsIn) -> Limits:
    return Limits(
        rpm=body.rpm,
        tpm=body.tpm,
        monthly_tokens=body.monthly_tokens,
        monthly_usd=body.monthly_usd,
        max_tokens=body.max_tokens,
        cache_ttl_seconds=body.cache_ttl_seconds,
        models=list(body.models) if body.models else None,
    )


def _limits_out(row: Tier | User | ApiKey) -> dict[str, Any]:
    return {
        "rpm": row.rpm,
        "tpm": row.tpm,
        "monthly_tokens": row.monthly_tokens,
        "monthly_usd": row.monthly_usd,
        "max_tokens": row.max_tokens,
        "cache_ttl_seconds": row.cache_ttl_seconds,
        "models": row.models,
    }


# -- tenants ----------------------------------------------------------------------------


def _tenant(row: Tenant) -> s.Tenant:
    return s.Tenant(
        id=row.id,
        name=row.name,
        monthly_usd=row.monthly_usd,
        body_storage=row.body_storage,
        created_at=row.created_at,
    )


def list_tenants(engine: Engine) -> s.TenantList:
    with Session(engine) as session:
        rows = session.scalars(select(Tenant).order_by(Tenant.id))
        return s.TenantList(data=[_tenant(row) for row in rows])


def get_tenant(engine: Engine, path: s.TenantPath) -> s.Tenant:
    with Session(engine) as session:
        return _tenant(_get(session, Tenant, path.tenant_id))


def create_tenant(engine: Engine, body: s.TenantCreate) -> s.Tenant:
    with transaction(engine) as session:
        return _tenant(admin.create_tenant(session, ACTOR, body.name, body.monthly_usd))


def set_tenant_body_storage(
    engine: Engine, path: s.TenantPath, body: s.TenantBodyStorage
) -> s.Tenant:
    with transaction(engine) as session:
        name = _get(session, Tenant, path.tenant_id).name
        return _tenant(admin.set_tenant_body_storage(session, ACTOR, name, body.body_storage))


# -- tiers ------------------------------------------------------------------------------


def _tier(row: Tier) -> s.Tier:
    return s.Tier.model_validate(
        {
            "id": row.id,
            "name": row.name,
            **_limits_out(row),
            "max_prompt_tokens": row.max_prompt_tokens,
            "moderation": row.moderation_action or "off",
            "prompt_cache": row.is_prompt_cache_marked,
            "created_at": row.created_at,
        }
    )


def _policy(body: s.TierSettings) -> TierPolicy:
    return TierPolicy(
        max_prompt_tokens=body.max_prompt_tokens,
        moderation=body.moderation,
        is_prompt_cache_marked=body.prompt_cache,
    )


def list_tiers(engine: Engine) -> s.TierList:
    with Session(engine) as session:
        return s.TierList(
            data=[_tier(row) for row in session.scalars(select(Tier).order_by(Tier.id))]
        )


def get_tier(engine: Engine, path: s.TierPath) -> s.Tier:
    with Session(engine) as session:
        return _tier(_get(session, Tier, path.tier_id))


def create_tier(engine: Engine, body: s.TierCreate) -> s.Tier:
    with transaction(engine) as session:
        return _tier(admin.create_tier(session, ACTOR, body.name, _limits(body), _policy(body)))


def replace_tier(engine: Engine, path: s.TierPath, body: s.TierSettings) -> s.Tier:
    with transaction(engine) as session:
        name = _get(session, Tier, path.tier_id).name
        return _tier(admin.update_tier(session, ACTOR, name, _limits(body), _policy(body)))


# -- users ------------------------------------------------------------------------------


def _user(row: User) -> s.User:
    return s.User.model_validate(
        {
            "id": row.id,
            "email": row.email,
            "tenant_id": row.tenant_id,
            "tier_id": row.tier_id,
            **_limits_out(row),
            "created_at": row.created_at,
        }
    )


def list_users(engine: Engine, query: s.UserQuery) -> s.UserList:
    statement = select(User).order_by(User.id)
    if query.tenant_id is not None:
        statement = statement.where(User.tenant_id == query.tenant_id)
    with Session(engine) as session:
        return s.UserList(data=[_user(row) for row in session.scalars(statement)])


def get_user(engine: Engine, path: s.UserPath) -> s.User:
    with Session(engine) as session:
        return _user(_get(session, User, path.user_id))


def create_user(engine: Engine, body: s.UserCreate) -> s.User:
    with transaction(engine) as session:
        tenant = _get(session, Tenant, body.tenant_id)
        tier = _get(session, Tier, body.tier_id)
        return _user(admin.create_user(session, ACTOR, body.email, tenant.name, tier.name))


def replace_user_limits(engine: Engine, path: s.UserPath, body: s.LimitsIn) -> s.User:
    with transaction(engine) as session:
        email = _get(session, User, path.user_id).email
        return _user(admin.set_user_overrides(session, ACTOR, email, _limits(body)))


def set_user_tier(engine: Engine, path: s.UserPath, body: s.UserTier) -> s.User:
    with transaction(engine) as session:
        email = _get(session, User, path.user_id).email
        tier = _get(session, Tier, body.tier_id)
        return _user(admin.set_user_tier(session, ACTOR, email, tier.name))


# -- keys -------------------------------------------------------------------------------


def _key(row: ApiKey) -> s.Key:
    return s.Key.model_validate(_key_fields(row))


def _key_fields(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "name": row.name,
        "prefix": row.prefix,
        "environment": row.environment,
        "end_user_tier_id": row.end_user_tier_id,
        **_limits_out(row),
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
    }


def list_keys(engine: Engine, query: s.KeyQuery) -> s.KeyList:
    statement = select(ApiKey).order_by(ApiKey.id)
    if query.user_id is not None:
        statement = statement.where(ApiKey.user_id == query.user_id)
    if query.tenant_id is not None:
        statement = statement.join(User).where(User.tenant_id == query.tenant_id)
    if not query.include_revoked:
        statement = statement.where(ApiKey.revoked_at.is_(None))
    with Session(engine) as session:
        return s.KeyList(data=[_key(row) for row in session.scalars(statement)])


def get_key(engine: Engine, path: s.KeyPath) -> s.Key:
    with Session(engine) as session:
        return _key(_get(session, ApiKey, path.key_id))


def create_key(engine: Engine, body: s.KeyCreate) -> s.CreatedKey:
    """The secret is in this answer and nowhere else (only its hash is stored)."""
    with transaction(engine) as session:
        email = _get(session, User, body.user_id).email
        row, secret = admin.create_key(
            session,
            ACTOR,
            email,
            name=body.name,
            environment=body.environment,
            models=list(body.models) if body.models else None,
            expires_in_days=body.expires_in_days,
        )
        return s.CreatedKey.model_validate({**_key_fields(row), "secret": secret})


def revoke_key(engine: Engine, path: s.KeyPath) -> s.Key:
    """Revoke a key (again: nothing changes). Every proxy process refuses it within seconds."""
    with transaction(engine) as session:
        row = _get(session, ApiKey, path.key_id)
        if row.revoked_at is None:
            row = admin.revoke_key(session, ACTOR, row.id)
        return _key(row)


def replace_key_limits(engine: Engine, path: s.KeyPath, body: s.KeyLimits) -> s.Key:
    with transaction(engine) as session:
        row = _get(session, ApiKey, path.key_id)
        tier = None if body.end_user_tier_id is None else _get(session, Tier, body.end_user_tier_id)
        row = admin.set_key_overrides(
            session, ACTOR, row.id, _limits(body), None if tier is None else tier.name
        )
        return _key(row)


# -- caps -------------------------------------------------------------------------------


def _caps(session: Session) -> s.Caps:
    tenants = [
        s.TenantCap(tenant_id=row.id, tenant=row.name, monthly_usd=row.monthly_usd)
        for row in session.scalars(select(Tenant).order_by(Tenant.id))
    ]
    return s.Caps(global_monthly_usd=get_global_monthly_usd(session), tenants=tenants)


def get_caps(engine: Engine) -> s.Caps:
    with Session(engine) as session:
        return _caps(session)


def set_global_cap(engine: Engine, body: s.CapIn) -> s.Caps:
    with transaction(engine) as session:
        admin.set_global_cap(session, ACTOR, body.monthly_usd)
        return _caps(session)


def set_tenant_cap(engine: Engine, path: s.TenantPath, body: s.CapIn) -> s.Caps:
    with transaction(engine) as session:
        name = _get(session, Tenant, path.tenant_id).name
        admin.set_tenant_cap(session, ACTOR, name, body.monthly_usd)
        return _caps(session)


# -- models and prices ------------------------------------------------------------------


def _model(row: ModelPrice) -> s.Model:
    return s.Model(
        name=row.name,
        provider=row.provider,
        upstream_model=row.upstream_model,
        input_per_mtok=row.input_per_mtok,
        cached_input_per_mtok=row.cached_input_per_mtok,
        cache_write_per_mtok=row.cache_write_per_mtok,
        output_per_mtok=row.output_per_mtok,
        fallbacks=row.fallbacks,
        updated_at=row.updated_at,
    )


def list_models(engine: Engine) -> s.ModelList:
    with Session(engine) as session:
        rows = session.scalars(select(ModelPrice).order_by(ModelPrice.provider, ModelPrice.name))
        return s.ModelList(data=[_model(row) for row in rows])


def get_model(engine: Engine, path: s.ModelPath) -> s.Model:
    with Session(engine) as session:
        row = session.get(ModelPrice, path.name)
        if row is None:
            raise NotFound(f"No model named {path.name!r}.", code="model_not_found")
        return _model(row)


def save_model(engine: Engine, path: s.ModelPath, body: s.ModelSave) -> s.Model:
    with transaction(engine) as session:
        row = admin.save_model_price(
            session,
            ACTOR,
            path.name,
            provider=body.provider,
            upstream_model=body.upstream_model,
            input_per_mtok=body.input_per_mtok,
            output_per_mtok=body.output_per_mtok,
            cached_input_per_mtok=body.cached_input_per_mtok,
            cache_write_per_mtok=body.cache_write_per_mtok,
            fallbacks=None if body.fallbacks is None else list(body.fallbacks),
        )
        return _model(row)


# -- usage ------------------------------------------------------------------------------


def get_usage(engine: Engine, query: s.UsageQuery) -> s.Usage:
    """A month's usage per tenant and per user, from the request log (``shared.usage``);
    with ``tenant_id``, that tenant's (its total, its users)."""
    month = query.month or month_of(datetime.now(UTC))
    usage = month_usage(engine, month)
    with Session(engine) as session:
        tenant_names = {tid: name for tid, name in session.execute(select(Tenant.id, Tenant.name))}
        users = {
            row.id: row for row in session.execute(select(User.id, User.email, User.tenant_id))
        }
    total = usage.total
    if query.tenant_id is not None:
        total = usage.tenants.get(query.tenant_id, Spent())
    tenants = [
        s.TenantUsage(tenant_id=tid, tenant=tenant_names[tid], tokens=x.tokens, usd=x.usd)
        for tid, x in sorted(usage.tenants.items())
        if tid in tenant_names and query.tenant_id in (None, tid)
    ]
    user_rows = [
        s.UserUsage(
            user_id=uid,
            email=users[uid].email,
            tenant_id=users[uid].tenant_id,
            tokens=x.tokens,
            usd=x.usd,
        )
        for uid, x in sorted(usage.users.items())
        if uid in users and query.tenant_id in (None, users[uid].tenant_id)
    ]
    return s.Usage(
        month=month,
        total=s.Spent(tokens=total.tokens, usd=total.usd),
        tenants=tenants,
        users=user_rows,
    )


# -- records ----------------------------------------------------------------------------


def list_records(engine: Engine, query: s.RecordQuery) -> s.RecordList:
    """Newest first; ``has_more`` says whether ``offset + limit`` leaves any out."""
    statement = select(RequestRecord)
    for column, value in (
        (RequestRecord.tenant_id, query.tenant_id),
        (RequestRecord.user_id, query.user_id),
        (RequestRecord.key_id, query.key_id),
        (RequestRecord.model, query.model),
        (RequestRecord.status, query.status),
        (RequestRecord.is_flagged, query.is_flagged),
        (RequestRecord.session_id, query.session_id),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(RequestRecord.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(RequestRecord.created_at < query.until)
    statement = (
        statement.order_by(RequestRecord.created_at.desc(), RequestRecord.id.desc())
        .offset(query.offset)
        .limit(query.limit + 1)
    )
    with Session(engine) as session:
        rows = list(session.scalars(statement))
    return s.RecordList(
        data=[s.Record.model_validate(row) for row in rows[: query.limit]],
        has_more=len(rows) > query.limit,
    )


def get_record(engine: Engine, path: s.RecordPath) -> s.RecordDetail:
    """One record with its bodies (secrets already redacted when it was written), its
    flags and the feedback on it."""
    with Session(engine) as session:
        row = session.get(RequestRecord, path.record_id)
        if row is None:
            raise NotFound(f"No record with id {path.record_id!r}.", code="record_not_found")
        bodies = session.get(RequestBody, row.id)
        flags = session.scalars(select(Flag).where(Flag.record_id == row.id).order_by(Flag.id))
        feedback = session.scalars(
            select(Feedback).where(Feedback.record_id == row.id).order_by(Feedback.id)
        )
        return s.RecordDetail(
            **s.Record.model_validate(row).model_dump(),
            request_body=bodies.request_body if bodies else None,
            response_body=bodies.response_body if bodies else None,
            attempts=row.attempts,
            flags=[s.Flag.model_validate(flag) for flag in flags],
            feedback=[s.Feedback.model_validate(item) for item in feedback],
        )
