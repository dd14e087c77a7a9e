"""The admin API's request and response bodies, path and query parameters (pydantic).

They are the contract: requests are validated against them (400, or 404 for a path),
answers are serialised through them, and the OpenAPI document is generated from them.
Bounds match the database columns (an int column takes 32 bits, names their length,
PostgreSQL text no NUL), so anything they accept can be stored. Money and prices go out
as decimal strings (``"12.50000000"``) and come in as numbers or strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from shared.usage import month_start

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"


MONEY_QUANTUM = Decimal("0.00000001")  # the columns' scale: Numeric(18, 8)
PRICE_QUANTUM = Decimal("0.000001")  # Numeric(12, 6)


def _money_text(value: Decimal) -> str:
    return format(value.quantize(MONEY_QUANTUM), "f")  # as stored; never "1E-7"


def _price_text(value: Decimal) -> str:
    return format(value.quantize(PRICE_QUANTUM), "f")


def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive UTC values; the API always writes the offset."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_in(value: datetime) -> datetime:
    try:
        return _as_utc(value)
    except OverflowError as exc:  # year 1 or 9999 pushed past the calendar by an offset
        raise ValueError("the time is out of range") from exc


Id = Annotated[int, Field(ge=1, le=MAX_INT32)]
Int32 = Annotated[int, Field(ge=0, le=MAX_INT32)]
Positive32 = Annotated[int, Field(ge=1, le=MAX_INT32)]
Int64 = Annotated[int, Field(ge=0, le=MAX_INT64)]
MoneyIn = Annotated[Decimal, Field(ge=0, le=Decimal("9999999999"), max_digits=18, decimal_places=8)]
PriceIn = Annotated[Decimal, Field(ge=0, le=Decimal("999999"), max_digits=12, decimal_places=6)]
Money = Annotated[Decimal, PlainSerializer(_money_text, return_type=str, when_used="json")]
Price = Annotated[Decimal, PlainSerializer(_price_text, return_type=str, when_used="json")]
Time = Annotated[datetime, AfterValidator(_as_utc)]
TimeIn = Annotated[datetime, AfterValidator(_utc_in)]


def _text(max_length: int, pattern: str = NO_NUL, min_length: int = 1) -> StringConstraints:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=pattern)


TenantName = Annotated[str, _text(200)]
TierName = Annotated[str, _text(100)]
Email = Annotated[str, _text(320, r"^[^\x00\s@]+@[^\x00\s@]+$")]
ModelName = Annotated[str, _text(200, MODEL_NAME_PATTERN)]
KeyName = Annotated[str, _text(200, min_length=0)]
Text200 = Annotated[str, _text(200)]
RecordId = Annotated[str, _text(36, r"^[0-9A-Za-z-]+$")]
Provider = Literal["openai", "anthropic"]
Environment = Literal["dev", "staging", "prod"]
Moderation = Literal["flag", "block", "off"]


class Closed(BaseModel):
    """A request body: unknown fields are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class Params(BaseModel):
    """Path or query parameters; unknown query parameters are ignored."""

    model_config = ConfigDict(extra="ignore")


# -- errors, lists --------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


# -- limits -----------------------------------------------------------------------------


class LimitsIn(Closed):
    """Limits as a whole: a field left out or null is cleared (unlimited on a tier,
    inherited from the tier on a user, from the user on a key)."""

    rpm: Int32 | None = None
    tpm: Int32 | None = None
    monthly_tokens: Int64 | None = None
    monthly_usd: MoneyIn | None = None
    max_tokens: Positive32 | None = None
    cache_ttl_seconds: Int32 | None = None
    models: list[ModelName] | None = Field(None, max_length=500)


class LimitsOut(BaseModel):
    rpm: int | None
    tpm: int | None
    monthly_tokens: int | None
    monthly_usd: Money | None
    max_tokens: int | None
    cache_ttl_seconds: int | None
    models: list[str] | None


# -- tenants ------------------------------------------------------------------------------


class TenantPath(Params):
    tenant_id: Id


class TenantCreate(Closed):
    name: TenantName
    monthly_usd: MoneyIn | None = None


class TenantBodyStorage(Closed):
    """How the tenant's request and response bodies are kept, for calls from now on:
    in full (secrets redacted), redacted (the shape without the text) or not at all."""

    body_storage: Literal["full", "redacted", "none"]


class Tenant(BaseModel):
    id: int
    name: str
    monthly_usd: Money | None
    body_storage: str
    created_at: Time


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tenant]


# -- tiers --------------------------------------------------------------------------------


class TierPath(Params):
    tier_id: Id


class TierSettings(LimitsIn):
    """A tier's limits and policy, as a whole (PUT replaces every field)."""

    max_prompt_tokens: Positive32 | None = None
    moderation: Moderation = "off"
    prompt_cache: bool = False


class TierCreate(TierSettings):
    name: TierName


class Tier(LimitsOut):
    id: int
    name: str
    max_prompt_tokens: int | None
    moderation: Moderation
    prompt_cache: bool
    created_at: Time


class TierList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tier]


# -- users --------------------------------------------------------------------------------


class UserPath(Params):
    user_id: Id


class UserQuery(Params):
    tenant_id: Id | None = None


class UserCreate(Closed):
    email: Email
    tenant_id: Id
    tier_id: Id


class UserTier(Closed):
    tier_id: Id


class User(LimitsOut):
    id: int
    email: str
    tenant_id: int
    tier_id: int
    created_at: Time


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[User]


# -- keys ---------------------------------------------------------------------------------


class KeyPath(Params):
    key_id: Id


class KeyQuery(Params):
    user_id: Id | None = None
    tenant_id: Id | None = None
    include_revoked: bool = True


class KeyCreate(Closed):
    user_id: Id
    name: KeyName = ""
    environment: Environment = "prod"
    models: list[ModelName] | None = Field(None, max_length=500)
    expires_in_days: Annotated[int, Field(ge=1, le=36500)] | None = None


class KeyLimits(LimitsIn):
    """A key's limits within its user's allowance, and the tier each end user gets."""

    end_user_tier_id: Id | None = None


class Key(LimitsOut):
    """A gateway key; only its display prefix is ever shown."""

    id: int
    user_id: int
    name: str
    prefix: str
    environment: str
    end_user_tier_id: int | None
    created_at: Time
    expires_at: Time | None
    revoked_at: Time | None


class CreatedKey(Key):
    secret: str = Field(description="The key itself: shown once, in this answer only.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Key]


# -- caps ---------------------------------------------------------------------------------


class CapIn(Closed):
    """A monthly USD cap; null removes it."""

    monthly_usd: MoneyIn | None


class TenantCap(BaseModel):
    tenant_id: int
    tenant: str
    monthly_usd: Money | None


class Caps(BaseModel):
    global_monthly_usd: Money | None
    tenants: list[TenantCap]


# -- models and prices --------------------------------------------------------------------


class ModelPath(Params):
    name: ModelName


class ModelSave(Closed):
    """A model's provider and prices in USD per million tokens. Unset cache prices are the
    input price; ``fallbacks`` null keeps the current chain, ``[]`` clears it."""

    provider: Provider
    upstream_model: Text200 | None = None
    input_per_mtok: PriceIn
    output_per_mtok: PriceIn
    cached_input_per_mtok: PriceIn | None = None
    cache_write_per_mtok: PriceIn | None = None
    fallbacks: list[ModelName] | None = Field(None, max_length=20)


class Model(BaseModel):
    name: str
    provider: str
    upstream_model: str
    input_per_mtok: Price
    cached_input_per_mtok: Price
    cache_write_per_mtok: Price
    output_per_mtok: Price
    fallbacks: list[str] | None
    updated_at: Time


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# -- usage --------------------------------------------------------------------------------


def _check_month(value: str) -> str:
    month_start(value)  # ValueError for "2026-13", "0000-01"
    return value


Month = Annotated[
    str, StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$"), AfterValidator(_check_month)
]


class UsageQuery(Params):
    month: Month | None = Field(None, description="YYYY-MM (UTC); default: this month.")
    tenant_id: Id | None = None


class Spent(BaseModel):
    tokens: int
    usd: Money


class TenantUsage(Spent):
    tenant_id: int
    tenant: str


class UserUsage(Spent):
    user_id: int
    email: str
    tenant_id: int


class Usage(BaseModel):
    """A month's usage, cache hits left out (what quotas and caps count)."""

    month: str
    total: Spent
    tenants: list[TenantUsage]
    users: list[UserUsage]


# -- records ------------------------------------------------------------------------------


class RecordPath(Params):
    record_id: RecordId


class RecordQuery(Params):
    tenant_id: Id | None = None
    user_id: Id | None = None
    key_id: Id | None = None
    model: Text200 | None = None
    status: Annotated[int, Field(ge=100, le=599)] | None = None
    is_flagged: bool | None = None
    session_id: Text200 | None = None
    since: TimeIn | None = Field(None, description="Records created at or after this time.")
    until: TimeIn | None = Field(None, description="Records created before this time.")
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class Record(BaseModel):
    """One call's record (metadata); the bodies come with ``GET /records/{record_id}``."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    client_request_id: str | None
    created_at: Time
    finished_at: Time
    tenant_id: int | None
    user_id: int | None
    key_id: int | None
    dialect: str
    endpoint: str
    model: str | None
    provider: str | None
    upstream_model: str | None
    answered_model: str | None
    is_stream: bool
    status: int
    error_code: str | None
    error_message: str | None
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Money
    session_id: str | None
    end_user: str | None
    latency_ms: float
    upstream_latency_ms: float | None
    ttft_ms: float | None
    overhead_ms: float | None
    is_cached: bool
    cache_saved_usd: Money
    refusal_reason: str | None
    is_flagged: bool
    output_valid: bool | None
    replay_of: str | None


class RecordList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Record]
    has_more: bool


class Flag(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    source: str
    reason: str
    note: str | None
    status: str
    created_at: Time


class Feedback(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key_id: int | None
    score: float
    comment: str | None
    created_at: Time


class RecordDetail(Record):
    request_body: str | None
    response_body: str | None
    attempts: list[dict[str, Any]] | None
    flags: list[Flag]
    feedback: list[Feedback]
