"""SQLAlchemy 2.0 models: accounts, the model catalogue and the request log.

Tenant (organisation) -> user -> key. A user has a tier; users and keys can
override the tier's limits (a NULL override means "use the tier's value").
A request record's bodies live in ``request_bodies`` so the metadata row stays
small for dashboards.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(18, 8)
Price = Numeric(12, 6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LimitsMixin:
    """The overridable limits; on a tier they are the defaults."""

    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)
    monthly_usd: Mapped[Decimal | None] = mapped_column(Money)
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    models: Mapped[list[str] | None] = mapped_column(JSON)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    monthly_usd: Mapped[Decimal | None] = mapped_column(Money)
    # How request and response bodies are kept: "full", "redacted" or "none".
    body_storage: Mapped[str] = mapped_column(String(16), default="full")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    users: Mapped[list[User]] = relationship(back_populates="tenant")


class Tier(LimitsMixin, Base):
    __tablename__ = "tiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    max_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    # Ask the gateway to mark long, stable system prompts for Anthropic's prompt cache.
    is_prompt_cache_marked: Mapped[bool] = mapped_column(Boolean, default=False)
    # Moderation through OpenAI's endpoint: None (off), "flag" or "block".
    moderation_action: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class User(LimitsMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    tier_id: Mapped[int] = mapped_column(ForeignKey("tiers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant] = relationship(back_populates="users")
    tier: Mapped[Tier] = relationship()
    keys: Mapped[list[ApiKey]] = relationship(back_populates="user")


class ApiKey(LimitsMixin, Base):
    """A gateway key. Only its SHA-256 hash and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    environment: Mapped[str] = mapped_column(String(16), default="prod")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Limits applied to each end user of this key separately (rpm, tpm, monthly_usd).
    end_user_tier_id: Mapped[int | None] = mapped_column(ForeignKey("tiers.id"))

    user: Mapped[User] = relationship(back_populates="keys")
    end_user_tier: Mapped[Tier | None] = relationship()


class ModelPrice(Base):
    """The model catalogue: public name -> provider, upstream name, USD per 1M tokens."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    upstream_model: Mapped[str] = mapped_column(String(200))
    input_per_mtok: Mapped[Decimal] = mapped_column(Price)
    cached_input_per_mtok: Mapped[Decimal] = mapped_column(Price)
    cache_write_per_mtok: Mapped[Decimal] = mapped_column(Price)
    output_per_mtok: Mapped[Decimal] = mapped_column(Price)
    # Models to try, in order, when this one fails upstream.
    fallbacks: Mapped[list[str] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConfigState(Base):
    """One row whose version changes whenever keys, tiers, caps or prices change."""

    __tablename__ = "config_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RequestRecord(Base):
    """One call that reached the proxy, refused ones included.

    On PostgreSQL the table is partitioned by month of ``created_at`` and its primary
    key is ``(id, created_at)`` (``shared.partitions``, migration 0005); ids are UUIDs,
    unique on their own, and the ORM knows a record by its id.
    """

    __tablename__ = "request_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_request_id: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    key_id: Mapped[int | None] = mapped_column(Integer)
    dialect: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(32))
    upstream_model: Mapped[str | None] = mapped_column(String(200))
    is_stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    session_id: Mapped[str | None] = mapped_column(String(200))
    end_user: Mapped[str | None] = mapped_column(String(200))
    latency_ms: Mapped[float] = mapped_column(Float)
    upstream_latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    overhead_ms: Mapped[float | None] = mapped_column(Float)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    is_cached: Mapped[bool] = mapped_column(Boolean, default=False)
    cache_saved_usd: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    refusal_reason: Mapped[str | None] = mapped_column(String(32))
    is_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    output_valid: Mapped[bool | None] = mapped_column(Boolean)
    answered_model: Mapped[str | None] = mapped_column(String(200))
    # The provider's id of the answer (chatcmpl-…, msg_…, resp_…), for lookups and isolation.
    response_id: Mapped[str | None] = mapped_column(String(200), index=True)
    # A replay made from the console links to the record it replays.
    replay_of: Mapped[str | None] = mapped_column(String(36), index=True)
    upstream_request_id: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_request_records_tenant_created", "tenant_id", "created_at"),
        Index("ix_request_records_user_created", "user_id", "created_at"),
        Index("ix_request_records_session", "session_id"),
        # Conversation search by key or end user, newest first (migration 0004).
        Index("ix_request_records_key_created", "key_id", "created_at"),
        Index("ix_request_records_end_user_created", "end_user", "created_at"),
    )


class RequestBody(Base):
    """The request and response bodies of one record (streams assembled).

    Partitioned like the records on PostgreSQL, keyed ``(record_id, created_at)``, with
    no foreign key (none can point at a partitioned key without its partition column):
    retention deletes bodies before or with their records (``shared.retention``).
    """

    __tablename__ = "request_bodies"

    record_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The record's created_at: bodies are partitioned, and expire, by it.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_body: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)


class DeploymentSetting(Base):
    """Deployment-wide values set at run time (e.g. ``global_monthly_usd``)."""

    __tablename__ = "deployment_settings"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScreeningRule(Base):
    """A prompt-screening pattern; ``tenant_id`` NULL applies to every tenant."""

    __tablename__ = "screening_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    pattern: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(8))  # "block" or "flag"
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Flag(Base):
    """A record marked for support: automatically (screening, errors, …) or by a person."""

    __tablename__ = "flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(36), index=True)
    source: Mapped[str] = mapped_column(String(16))  # "auto" or "manual"
    reason: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open / resolved
    assignee: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("record_id", "reason", name="uq_flags_record_reason"),)


class ConsoleUser(Base):
    """A person who signs in to the console. Passwords are stored as argon2 hashes."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(500))
    role: Mapped[str] = mapped_column(String(16))  # admin / support / viewer
    is_disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Who changed what, when: before -> after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Feedback(Base):
    """An app's score for one answer (``POST /v1/feedback``)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(36), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertDelivery(Base):
    """One alert (scope + threshold + period), delivered exactly once to the webhooks."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_key: Mapped[str] = mapped_column(String(300), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending/delivered/failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Not before this time: the backed-off retry, or the lease of the evaluator sending it.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- usage rollups (console dashboards; maintained by shared.rollup) --------------------

# Latency histogram buckets in ms, log-spaced two per doubling from 0.25 ms to ~524 s.
# Bucket 0 counts values below LATENCY_EDGES_MS[0], bucket i counts
# [LATENCY_EDGES_MS[i-1], LATENCY_EDGES_MS[i]), the last counts everything above.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(2 ** (k / 2) for k in range(-4, 39))
LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1
LATENCY_METRICS = ("total", "upstream", "overhead", "ttft")


def latency_column(metric: str, bucket: int) -> str:
    """The rollup column counting ``metric`` values in ``bucket`` (NULL means zero)."""
    return f"lat_{metric}_{bucket:02d}"


def _usage_sums() -> list[Column[Any]]:
    return [
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),  # status 400 and above
        Column("cache_hits", BigInteger, nullable=False),
        # Tokens of calls that went upstream; cache hits are counted in cache_hit_tokens.
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cache_read_tokens", BigInteger, nullable=False),
        Column("cache_write_tokens", BigInteger, nullable=False),
        Column("cache_hit_tokens", BigInteger, nullable=False),
        Column("cost_usd", Money, nullable=False),
        # cache_saved_usd of cache hits (response cache) and of other calls (prompt cache).
        Column("response_cache_saved_usd", Money, nullable=False),
        Column("prompt_cache_saved_usd", Money, nullable=False),
    ]


def _errors_and_latencies() -> list[Column[Any]]:
    return [
        # The record's error_code, "http_<status>" for an error without one, "" for success.
        Column("error_code", String(100), nullable=False),
        Column("refusal_reason", String(32), nullable=False),
        *_usage_sums(),
        *(
            Column(latency_column(metric, bucket), Integer)
            for metric in LATENCY_METRICS
            for bucket in range(LATENCY_BUCKETS)
        ),
    ]


# One row per hour x tenant x user x key x model x provider x error code x refusal reason.
# Missing ids are 0 and missing names "" so that the primary key can take them.
usage_hourly_table = Table(
    "usage_hourly",
    Base.metadata,
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(32), nullable=False),
    *_errors_and_latencies(),
    PrimaryKeyConstraint(
        "hour",
        "tenant_id",
        "user_id",
        "key_id",
        "model",
        "provider",
        "error_code",
        "refusal_reason",
    ),
)

# The same per day and tenant, without users and keys: small enough for month-long charts.
usage_daily_table = Table(
    "usage_daily",
    Base.metadata,
    Column("day", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(32), nullable=False),
    *_errors_and_latencies(),
    PrimaryKeyConstraint("day", "tenant_id", "model", "provider", "error_code", "refusal_reason"),
)

# Per day and key, sums only: spend by user or key, quotas and billing over many days.
usage_key_daily_table = Table(
    "usage_key_daily",
    Base.metadata,
    Column("day", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    *_usage_sums(),
    PrimaryKeyConstraint("day", "tenant_id", "user_id", "key_id"),
)

# End users are many: their rollup is per day, without error types or latencies.
end_user_daily_table = Table(
    "usage_end_user_daily",
    Base.metadata,
    Column("day", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("end_user", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(32), nullable=False),
    *_usage_sums(),
    PrimaryKeyConstraint("day", "tenant_id", "user_id", "key_id", "end_user", "model", "provider"),
    # The chosen end users' days, without reading everyone's.
    Index("ix_usage_end_user_daily_end_user_day", "end_user", "day"),
)

# Per month: an upper bound of each end user's spend in any range within the months,
# so the top end users of a long range are found without summing every end user's days.
end_user_monthly_table = Table(
    "usage_end_user_monthly",
    Base.metadata,
    Column("month", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("end_user", String(200), nullable=False),
    *_usage_sums(),
    PrimaryKeyConstraint("month", "tenant_id", "user_id", "key_id", "end_user"),
)
