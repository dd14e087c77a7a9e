"""The console's admin writes: tiers, overrides, caps, keys, prices, users and tenants.

Each function takes the acting ``Actor`` and, in the caller's transaction:
checks the role (``PermissionDenied`` if it is not admin), validates
(``AccountError`` with a sentence a person understands), makes the change through
``shared.accounts`` (which announces it, so every proxy process picks it up within
``config_poll_seconds``) and records an audit entry with the values before and after.

Unlike the CLI's partial updates, the console edits whole forms: a limit given
as ``None`` here *clears* it (unlimited on a tier, inherited on a user or key).
"""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import accounts, audit
from shared.accounts import AccountError, Limits, TierPolicy
from shared.console_users import Actor, require_role
from shared.models import ApiKey, ModelPrice, Tenant, Tier, User

ADMIN = "admin"
TENANT_FIELDS = ("name", "monthly_usd")
USER_FIELDS = ("email", "tenant_id", "tier_id", *audit.LIMIT_FIELDS)


def _check_limits(session: Session, limits: Limits) -> None:
    limits.validate()
    if limits.max_tokens is not None and limits.max_tokens < 1:
        raise AccountError("max_tokens must be at least 1 (leave it empty for no ceiling)")
    if limits.models:
        known = set(session.scalars(select(ModelPrice.name)))
        unknown = sorted(set(limits.models) - known)
        if unknown:
            raise AccountError(f"not in the model catalogue: {', '.join(unknown)}")


def _assign_limits(row: Tier | User | ApiKey, limits: Limits) -> None:
    """Set every limit column, ``None`` included (an empty model list means "all models")."""
    for field in fields(limits):
        value = getattr(limits, field.name)
        if field.name == "models":
            value = list(value) if value else None
        setattr(row, field.name, value)


# -- tiers ------------------------------------------------------------------------------


def create_tier(
    session: Session, actor: Actor, name: str, limits: Limits, policy: TierPolicy
) -> Tier:
    require_role(actor, ADMIN)
    name = name.strip()
    if not name:
        raise AccountError("a tier needs a name")
    _check_limits(session, limits)
    tier = accounts.create_tier(session, name, limits, policy)
    session.flush()
    audit.record(
        session, actor, "tier.create", "tier", name, after=audit.snapshot(tier, audit.TIER_FIELDS)
    )
    return tier


def update_tier(
    session: Session, actor: Actor, name: str, limits: Limits, policy: TierPolicy
) -> Tier:
    """Set every limit of a tier as given (``None``: unlimited) and its policy."""
    require_role(actor, ADMIN)
    _check_limits(session, limits)
    policy.validate()
    tier = accounts.get_tier(session, name)
    before = audit.snapshot(tier, audit.TIER_FIELDS)
    _assign_limits(tier, limits)
    tier.max_prompt_tokens = policy.max_prompt_tokens
    for column, value in policy.column_values().items():
        if column != "max_prompt_tokens":
            setattr(tier, column, value)
    accounts.announce_change(session)
    after = audit.snapshot(tier, audit.TIER_FIELDS)
    audit.record(session, actor, "tier.update", "tier", name, before=before, after=after)
    return tier


# -- per-user and per-key overrides -----------------------------------------------------


def set_user_overrides(session: Session, actor: Actor, email: str, limits: Limits) -> User:
    """Replace a user's overrides (``None``: use the tier's value)."""
    require_role(actor, ADMIN)
    _check_limits(session, limits)
    user = accounts.get_user(session, email)
    before = audit.snapshot(user, audit.LIMIT_FIELDS)
    _assign_limits(user, limits)
    accounts.announce_change(session)
    after = audit.snapshot(user, audit.LIMIT_FIELDS)
    audit.record(session, actor, "user.limits", "user", email, before=before, after=after)
    return user


def set_key_overrides(
    session: Session,
    actor: Actor,
    key_id: int,
    limits: Limits,
    end_user_tier: str | None,
) -> ApiKey:
    """Replace a key's overrides and its end-user tier (``None``: none)."""
    require_role(actor, ADMIN)
    _check_limits(session, limits)
    key = _key(session, key_id)
    before = audit.snapshot(key, audit.KEY_FIELDS)
    _assign_limits(key, limits)
    key.end_user_tier = accounts.get_tier(session, end_user_tier) if end_user_tier else None
    accounts.announce_change(session)
    session.flush()
    after = audit.snapshot(key, audit.KEY_FIELDS)
    audit.record(session, actor, "key.limits", "key", key.id, before=before, after=after)
    return key


# -- caps -------------------------------------------------------------------------------


def set_tenant_cap(
    session: Session, actor: Actor, tenant: str, monthly_usd: Decimal | None
) -> Tenant:
    require_role(actor, ADMIN)
    row = accounts.get_tenant(session, tenant)
    before = audit.snapshot(row, TENANT_FIELDS)
    accounts.set_tenant_monthly_usd(session, tenant, monthly_usd)
    after = audit.snapshot(row, TENANT_FIELDS)
    audit.record(session, actor, "cap.tenant", "tenant", tenant, before=before, after=after)
    return row


def set_global_cap(session: Session, actor: Actor, monthly_usd: Decimal | None) -> None:
    require_role(actor, ADMIN)
    before = {"monthly_usd": accounts.get_global_monthly_usd(session)}
    accounts.set_global_monthly_usd(session, monthly_usd)
    audit.record(
        session,
        actor,
        "cap.global",
        "deployment",
        accounts.GLOBAL_MONTHLY_USD,
        before=before,
        after={"monthly_usd": monthly_usd},
    )


# -- keys -------------------------------------------------------------------------------


def create_key(
    session: Session,
    actor: Actor,
    user_email: str,
    *,
    name: str = "",
    environment: str = "prod",
    models: list[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret (shown once, recorded nowhere)."""
    require_role(actor, ADMIN)
    if models:
        _check_limits(session, Limits(models=models))
    key, secret = accounts.create_key(
        session,
        user_email,
        name=name.strip(),
        environment=environment,
        models=models,
        expires_in_days=expires_in_days,
    )
    session.flush()
    after = {**audit.snapshot(key, audit.KEY_FIELDS), "user": user_email}
    audit.record(session, actor, "key.create", "key", key.id, after=after)
    return key, secret


def revoke_key(session: Session, actor: Actor, key_id: int) -> ApiKey:
    require_role(actor, ADMIN)
    key = _key(session, key_id)
    if key.revoked_at is not None:
        raise AccountError(f"key {key.prefix}… is already revoked")
    before = audit.snapshot(key, ("prefix", "revoked_at"))
    accounts.revoke_key(session, str(key.id))
    after = audit.snapshot(key, ("prefix", "revoked_at"))
    audit.record(session, actor, "key.revoke", "key", key.id, before=before, after=after)
    return key


def _key(session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise AccountError(f"no key with id {key_id}")
    return key


# -- prices -----------------------------------------------------------------------------


def save_model_price(
    session: Session,
    actor: Actor,
    name: str,
    *,
    provider: str,
    upstream_model: str | None,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cached_input_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
    fallbacks: list[str] | None = None,
) -> ModelPrice:
    """Add a model to the catalogue or change its prices and fallback chain."""
    require_role(actor, ADMIN)
    name = name.strip()
    if not name:
        raise AccountError("a model needs a name")
    existing = session.get(ModelPrice, name)
    before = None if existing is None else audit.snapshot(existing, audit.PRICE_FIELDS)
    row = accounts.upsert_model(
        session,
        name,
        provider=provider,
        upstream_model=upstream_model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cached_input_per_mtok=cached_input_per_mtok,
        cache_write_per_mtok=cache_write_per_mtok,
        fallbacks=fallbacks,
    )
    action = "price.create" if before is None else "price.update"
    after = audit.snapshot(row, audit.PRICE_FIELDS)
    audit.record(session, actor, action, "model", name, before=before, after=after)
    return row


# -- users and tenants ------------------------------------------------------------------


def create_tenant(
    session: Session, actor: Actor, name: str, monthly_usd: Decimal | None = None
) -> Tenant:
    require_role(actor, ADMIN)
    name = name.strip()
    if not name:
        raise AccountError("a tenant needs a name")
    tenant = accounts.create_tenant(session, name, monthly_usd)
    session.flush()
    audit.record(
        session, actor, "tenant.create", "tenant", name, after=audit.snapshot(tenant, TENANT_FIELDS)
    )
    return tenant


def set_tenant_body_storage(session: Session, actor: Actor, name: str, storage: str) -> Tenant:
    """Keep this tenant's bodies in full, redacted or not at all, for calls from now on."""
    require_role(actor, ADMIN)
    before = {"body_storage": accounts.get_tenant(session, name).body_storage}
    tenant = accounts.set_tenant_body_storage(session, name, storage)
    after = {"body_storage": storage}
    audit.record(session, actor, "tenant.body_storage", "tenant", name, before=before, after=after)
    return tenant


def create_user(session: Session, actor: Actor, email: str, tenant: str, tier: str) -> User:
    require_role(actor, ADMIN)
    email = email.strip()
    if "@" not in email:
        raise AccountError(f"{email!r} is not an email address")
    user = accounts.create_user(session, email, tenant, tier)
    session.flush()
    after = {"email": email, "tenant": tenant, "tier": tier}
    audit.record(session, actor, "user.create", "user", email, after=after)
    return user


def set_user_tier(session: Session, actor: Actor, email: str, tier: str) -> User:
    require_role(actor, ADMIN)
    user = accounts.get_user(session, email)
    before = {"tier": user.tier.name}
    user.tier = accounts.get_tier(session, tier)
    accounts.announce_change(session)
    audit.record(session, actor, "user.tier", "user", email, before=before, after={"tier": tier})
    return user
