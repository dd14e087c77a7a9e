"""Tenants, tiers, users, keys and prices: the writes behind the CLI, console and admin API.

Every write calls ``announce_change`` in the same transaction so each proxy
process drops its cached config within ``config_poll_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.body_storage import BODY_STORAGE_CHOICES
from shared.catalogue import PROVIDERS
from shared.keys import ENVIRONMENTS, generate_key
from shared.models import (
    ApiKey,
    ConfigState,
    DeploymentSetting,
    ModelPrice,
    Tenant,
    Tier,
    User,
)

CONFIG_STATE_ID = 1


class AccountError(ValueError):
    """A write that cannot be done as asked (unknown name, duplicate, bad value)."""


class AccountConflict(AccountError):
    """The name is taken: a tenant, tier or user with it already exists."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Overridable limits. ``None`` means "not set here" (inherit, or unlimited on a tier)."""

    rpm: int | None = None
    tpm: int | None = None
    monthly_tokens: int | None = None
    monthly_usd: Decimal | None = None
    max_tokens: int | None = None
    cache_ttl_seconds: int | None = None
    models: list[str] | None = None

    def set_values(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def validate(self) -> None:
        for name, value in self.set_values().items():
            if name != "models" and value < 0:
                raise AccountError(f"{name} must not be negative (got {value})")


MODERATION_CHOICES = ("flag", "block", "off")


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """A tier's screening and prompt-cache settings. ``None`` means "leave as it is".

    ``moderation``: "flag" or "block" sends prompts to OpenAI's moderation endpoint;
    "off" stops it. ``max_prompt_tokens`` refuses longer prompts (estimated).
    """

    max_prompt_tokens: int | None = None
    moderation: str | None = None
    is_prompt_cache_marked: bool | None = None

    def validate(self) -> None:
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise AccountError(f"max_prompt_tokens must be positive (got {self.max_prompt_tokens})")
        if self.moderation is not None and self.moderation not in MODERATION_CHOICES:
            raise AccountError(f"moderation must be one of {', '.join(MODERATION_CHOICES)}")

    def column_values(self) -> dict[str, Any]:
        """The ``Tier`` columns this policy sets."""
        values: dict[str, Any] = {}
        if self.max_prompt_tokens is not None:
            values["max_prompt_tokens"] = self.max_prompt_tokens
        if self.moderation is not None:
            values["moderation_action"] = None if self.moderation == "off" else self.moderation
        if self.is_prompt_cache_marked is not None:
            values["is_prompt_cache_marked"] = self.is_prompt_cache_marked
        return values


def now_utc() -> datetime:
    return datetime.now(UTC)


def announce_change(session: Session) -> int:
    """Bump the config version (in this transaction); returns the new version."""
    state = session.get(ConfigState, CONFIG_STATE_ID)
    if state is None:
        state = ConfigState(id=CONFIG_STATE_ID, version=0, updated_at=now_utc())
        session.add(state)
    state.version += 1
    state.updated_at = now_utc()
    session.flush()
    return state.version


def create_tenant(session: Session, name: str, monthly_usd: Decimal | None = None) -> Tenant:
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise AccountConflict(f"tenant {name!r} already exists")
    if monthly_usd is not None and monthly_usd < 0:
        raise AccountError("monthly_usd must not be negative")
    tenant = Tenant(name=name, monthly_usd=monthly_usd, created_at=now_utc())
    session.add(tenant)
    announce_change(session)
    return tenant


def set_tenant_body_storage(session: Session, name: str, storage: str) -> Tenant:
    """Keep this tenant's bodies in full, redacted or not at all (``shared.body_storage``);
    every proxy process applies it within ``config_poll_seconds``."""
    if storage not in BODY_STORAGE_CHOICES:
        raise AccountError(f"body storage must be one of {', '.join(BODY_STORAGE_CHOICES)}")
    tenant = get_tenant(session, name)
    tenant.body_storage = storage
    announce_change(session)
    return tenant


def get_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise AccountError(f"no tenant named {name!r}")
    return tenant


def create_tier(
    session: Session, name: str, limits: Limits, policy: TierPolicy | None = None
) -> Tier:
    limits.validate()
    policy = policy or TierPolicy()
    policy.validate()
    if session.scalar(select(Tier).where(Tier.name == name)) is not None:
        raise AccountConflict(f"tier {name!r} already exists")
    tier = Tier(name=name, created_at=now_utc(), **limits.set_values(), **policy.column_values())
    session.add(tier)
    announce_change(session)
    return tier


def update_tier(
    session: Session, name: str, limits: Limits, policy: TierPolicy | None = None
) -> Tier:
    limits.validate()
    policy = policy or TierPolicy()
    policy.validate()
    tier = get_tier(session, name)
    for field_name, value in {**limits.set_values(), **policy.column_values()}.items():
        setattr(tier, field_name, value)
    announce_change(session)
    return tier


def get_tier(session: Session, name: str) -> Tier:
    tier = session.scalar(select(Tier).where(Tier.name == name))
    if tier is None:
        raise AccountError(f"no tier named {name!r}")
    return tier


def create_user(session: Session, email: str, tenant_name: str, tier_name: str) -> User:
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise AccountConflict(f"user {email!r} already exists")
    user = User(
        email=email,
        tenant=get_tenant(session, tenant_name),
        tier=get_tier(session, tier_name),
        created_at=now_utc(),
    )
    session.add(user)
    announce_change(session)
    return user


def get_user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise AccountError(f"no user with email {email!r}")
    return user


def create_key(
    session: Session,
    user_email: str,
    *,
    name: str = "",
    environment: str = "prod",
    models: list[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret, which is not stored anywhere."""
    if environment not in ENVIRONMENTS:
        raise AccountError(f"environment must be one of {', '.join(ENVIRONMENTS)}")
    if expires_in_days is not None and expires_in_days <= 0:
        raise AccountError("expires_in_days must be positive")
    user = get_user(session, user_email)
    new = generate_key()
    created = now_utc()
    key = ApiKey(
        user=user,
        name=name,
        prefix=new.prefix,
        secret_hash=new.secret_hash,
        environment=environment,
        models=models or None,
        created_at=created,
        expires_at=created + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(key)
    announce_change(session)
    return key, new.secret


def revoke_key(session: Session, id_or_prefix: str) -> ApiKey:
    """Revoke one key by numeric id or display prefix (the prefix must be unambiguous)."""
    key = _one_key(session, id_or_prefix)
    if key.revoked_at is None:
        key.revoked_at = now_utc()
        announce_change(session)
    return key


def upsert_model(
    session: Session,
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
    """Add a model or change its prices. Unset cache prices default to the input price.

    ``fallbacks`` (models tried in order when this one keeps failing upstream) must
    already be in the catalogue; they may be of the other provider (chat completions and
    messages calls are then translated). ``None`` keeps the current chain, ``[]`` clears it.
    """
    if provider not in PROVIDERS:
        raise AccountError(f"provider must be one of {', '.join(PROVIDERS)}")
    if fallbacks is not None:
        _check_fallbacks(session, name, fallbacks)
    prices = [input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok]
    if any(p is not None and p < 0 for p in prices):
        raise AccountError("prices must not be negative")
    row = session.get(ModelPrice, name) or ModelPrice(name=name)
    row.provider = provider
    row.upstream_model = upstream_model or name
    row.input_per_mtok = input_per_mtok
    row.output_per_mtok = output_per_mtok
    row.cached_input_per_mtok = (
        cached_input_per_mtok if cached_input_per_mtok is not None else input_per_mtok
    )
    row.cache_write_per_mtok = (
        cache_write_per_mtok if cache_write_per_mtok is not None else input_per_mtok
    )
    if fallbacks is not None:
        row.fallbacks = list(fallbacks) or None
    row.updated_at = now_utc()
    session.add(row)
    announce_change(session)
    return row


def _check_fallbacks(session: Session, name: str, fallbacks: list[str]) -> None:
    if len(set(fallbacks)) != len(fallbacks):
        raise AccountError("fallbacks must not repeat a model")
    for fallback in fallbacks:
        if fallback == name:
            raise AccountError(f"model {name!r} cannot be its own fallback")
        if session.get(ModelPrice, fallback) is None:
            raise AccountError(f"fallback model {fallback!r} is not in the catalogue; add it first")


# -- limits on existing rows, caps -----------------------------------------------------

GLOBAL_MONTHLY_USD = "global_monthly_usd"


def set_user_limits(session: Session, email: str, limits: Limits) -> User:
    """Override some of a user's limits (over its tier's); unset fields stay as they are."""
    limits.validate()
    user = get_user(session, email)
    for field_name, value in limits.set_values().items():
        setattr(user, field_name, value)
    announce_change(session)
    return user


def set_key_limits(
    session: Session,
    id_or_prefix: str,
    limits: Limits,
    *,
    end_user_tier: str | None = None,
) -> ApiKey:
    """Limit one key within its user's allowance; ``end_user_tier`` limits each end user."""
    limits.validate()
    key = _one_key(session, id_or_prefix)
    for field_name, value in limits.set_values().items():
        setattr(key, field_name, value)
    if end_user_tier is not None:
        key.end_user_tier = get_tier(session, end_user_tier)
    announce_change(session)
    return key


def set_tenant_monthly_usd(session: Session, name: str, monthly_usd: Decimal | None) -> Tenant:
    """Set (or with None, remove) a tenant's monthly USD cap."""
    if monthly_usd is not None and monthly_usd < 0:
        raise AccountError("monthly_usd must not be negative")
    tenant = get_tenant(session, name)
    tenant.monthly_usd = monthly_usd
    announce_change(session)
    return tenant


def set_global_monthly_usd(session: Session, monthly_usd: Decimal | None) -> None:
    """Set (or with None, remove) the deployment's monthly USD cap, the last line of defense."""
    if monthly_usd is not None and monthly_usd < 0:
        raise AccountError("the global monthly USD cap must not be negative")
    row = session.get(DeploymentSetting, GLOBAL_MONTHLY_USD)
    if monthly_usd is None:
        if row is not None:
            session.delete(row)
    else:
        row = row or DeploymentSetting(name=GLOBAL_MONTHLY_USD)
        row.value = str(monthly_usd)
        row.updated_at = now_utc()
        session.add(row)
    announce_change(session)


def get_global_monthly_usd(session: Session) -> Decimal | None:
    row = session.get(DeploymentSetting, GLOBAL_MONTHLY_USD)
    return None if row is None else Decimal(row.value)


def _one_key(session: Session, id_or_prefix: str) -> ApiKey:
    """One key by numeric id or display prefix (the prefix must be unambiguous)."""
    conditions = [ApiKey.prefix == id_or_prefix]
    if id_or_prefix.isdigit():
        conditions.append(ApiKey.id == int(id_or_prefix))
    matches = list(session.scalars(select(ApiKey).where(or_(*conditions))))
    if not matches:
        raise AccountError(f"no key with id or prefix {id_or_prefix!r}")
    if len(matches) > 1:
        raise AccountError(f"{id_or_prefix!r} matches {len(matches)} keys; use the id")
    return matches[0]
