"""Settings, read once from ``METERGATE_*`` environment variables.

Every field here is listed in the README's settings table (a test checks it).
The providers' own variables (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``) keep their standard names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".metergate")
MIN_ADMIN_TOKEN_CHARS = 32
# The request log is the ledger quota counters are rebuilt from: it must hold a whole month.
MIN_RECORDS_RETENTION_DAYS = 32


class Settings(BaseSettings):
    """Deployment settings. Unset values give the embedded mode (SQLite, no Redis)."""

    model_config = SettingsConfigDict(
        env_prefix="METERGATE_", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="Directory for the SQLite file and the record spool."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; postgresql:// or postgresql+psycopg://. Unset: SQLite."
    )
    redis_url: str = Field("", description="redis://host:port/db. Unset: in-process storage.")

    openai_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("OPENAI_API_KEY"),
        description="Provider key for OpenAI (never stored in the database).",
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL"),
        description="OpenAI API base URL.",
    )
    anthropic_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("ANTHROPIC_API_KEY"),
        description="Provider key for Anthropic (never stored in the database).",
    )
    anthropic_base_url: str = Field(
        "https://api.anthropic.com",
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL"),
        description="Anthropic API base URL.",
    )

    max_body_bytes: int = Field(
        4 * 1024 * 1024, description="Largest request body accepted, in bytes (413 above)."
    )
    body_read_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest time a client may take to send its request body (408 after it), "
        "so a client dripping its body cannot hold a worker.",
    )
    upstream_connect_timeout_seconds: float = Field(
        5.0, description="Connect timeout for upstream calls."
    )
    upstream_first_byte_timeout_seconds: float = Field(
        30.0, description="Deadline for the upstream's first byte (504 after it)."
    )
    upstream_read_timeout_seconds: float = Field(
        30.0, description="Longest silence allowed between streamed upstream chunks."
    )
    upstream_deadline_seconds: float = Field(
        60.0,
        gt=0,
        description="Overall deadline for one call's upstream attempts, retries and fallbacks "
        "included; no backoff sleeps past it.",
    )
    retry_max_attempts: int = Field(
        3, ge=1, description="Upstream attempts per model (the first one included)."
    )
    retry_base_seconds: float = Field(
        0.25, ge=0, description="Backoff base: retry n waits up to base * 2^n (full jitter)."
    )
    retry_max_seconds: float = Field(
        8.0, ge=0, description="Backoff cap (an upstream retry-after can ask for longer)."
    )
    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        description="Consecutive failures (5xx, timeouts, dropped connections) that open the "
        "circuit breaker of one upstream model.",
    )
    breaker_cooldown_seconds: float = Field(
        30.0, ge=0, description="How long an open breaker fails fast before one probe call."
    )
    upstream_min_remaining_requests: int = Field(
        2,
        ge=0,
        description="Hold new upstream calls until the provider's rate-limit window resets "
        "when it reports fewer requests left than this (0: never).",
    )
    upstream_min_remaining_tokens: int = Field(
        2000,
        ge=0,
        description="Hold new upstream calls until the provider's rate-limit window resets "
        "when it reports fewer tokens left than this (0: never).",
    )
    config_poll_seconds: float = Field(
        1.0, description="How often each proxy process checks for config changes."
    )
    record_batch_size: int = Field(
        200,
        description="Records written per database batch (a backlog: up to ten times as many).",
    )
    record_flush_seconds: float = Field(
        0.2, description="Longest wait before queued records are written."
    )
    spool_dir: Path | None = Field(
        None, description="Where records wait while the database is down (default: data_dir/spool)."
    )
    unauthenticated_rpm: int = Field(
        600,
        ge=1,
        description="Requests per minute per client IP whose key fails authentication (429 above).",
    )
    reservation_ttl_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a call may hold its quota reservation before it expires "
        "(frees the hold of a crashed or abandoned call).",
    )
    limits_fail_open: bool = Field(
        False,
        description="When Redis cannot be reached, let calls through without rate limits and "
        "quotas (logged) instead of refusing them with 503.",
    )
    trust_forwarded_for: bool = Field(
        False, description="Take the client IP from X-Forwarded-For (behind a trusted proxy)."
    )
    max_messages: int = Field(
        1000, ge=1, description="Most messages one request may carry (400 too_many_messages above)."
    )
    moderation_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Deadline for a moderation check; past it the call goes ahead, flagged "
        "moderation_unavailable.",
    )
    output_retries: int = Field(
        1,
        ge=0,
        description="Times a non-streamed answer failing its requested JSON schema is asked for "
        "again.",
    )
    cache_max_ttl_seconds: int = Field(
        86400,
        ge=1,
        description="Longest time a cached answer is kept, whatever the tier or the "
        "x-metergate-cache-ttl header asks for.",
    )
    cache_lock_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="How long identical concurrent cache misses wait for the one call asking "
        "upstream before making their own.",
    )
    cache_memory_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Size bound of the in-process answer cache (embedded mode, no Redis); "
        "least recently used answers go first.",
    )
    response_owner_ttl_seconds: int = Field(
        30 * 24 * 3600,
        ge=1,
        description="How long the gateway remembers on its hot path which tenant owns each "
        "Responses API id it returned (then it asks the request log).",
    )
    console_session_seconds: int = Field(
        8 * 3600,
        ge=60,
        description="How long a console sign-in lasts before the console asks for it again.",
    )
    console_oidc: bool | None = Field(
        None,
        description="Offer OIDC sign-in (st.login) in the console; unset: on when "
        ".streamlit/secrets.toml has an [auth] section.",
    )
    console_proxy_url: str = Field(
        "http://127.0.0.1:8080",
        description="The proxy the console replays conversations through (its base URL, "
        "without /v1).",
    )
    console_api_key: SecretStr = Field(
        SecretStr(""),
        description="The gateway key (mg-…) replays are sent and billed with: a key of a "
        "tenant and user kept for the console. Unset: replay is off.",
    )
    console_replay_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="How long the console waits for a replayed conversation's answer.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token of the admin REST API under /admin/v1, at least 32 characters "
        "(unset: the admin API refuses every call).",
    )
    feedback_flag_below: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Feedback scores (0 to 1) below this flag the record for support "
        "(reason low_feedback).",
    )
    alert_webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated webhook URLs that budget and spend-spike alerts are posted "
        "to (Slack-compatible JSON). Unset: no alerts.",
    )
    alert_thresholds_percent: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [50, 80, 100],
        description="Comma-separated percentages of a monthly USD budget or cap (user, key, "
        "tenant, global) at which an alert is sent, once per month each.",
    )
    alert_spike_factor: float = Field(
        3.0,
        gt=1,
        description="A spend spike: the current hour's spend (global or a tenant's) at least "
        "this many times its average hourly spend over the baseline days.",
    )
    alert_spike_min_usd: float = Field(
        10.0,
        ge=0,
        description="Smallest hourly spend in USD that counts as a spike, whatever the baseline.",
    )
    alert_spike_baseline_days: int = Field(
        7, ge=1, description="Days of hourly spend the spike detector compares the hour with."
    )
    alert_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the background job (metergate alerts run) evaluates alerts.",
    )
    alert_max_attempts: int = Field(
        10, ge=1, description="Deliveries of one alert to one webhook tried before giving up."
    )
    alert_retry_base_seconds: float = Field(
        30.0,
        ge=0,
        description="Wait before retrying a failed alert delivery, doubled after each failure "
        "(at most an hour).",
    )
    retention_bodies_days: int | None = Field(
        None,
        ge=1,
        description="Delete request and response bodies older than this many days (the "
        "metadata stays). Unset: keep them as long as the records.",
    )
    retention_records_days: int | None = Field(
        None,
        ge=MIN_RECORDS_RETENTION_DAYS,
        description="Delete request records (with their bodies, flags and feedback) older than "
        "this many days; at least 32 (quota counters are rebuilt from the month's records). "
        "Unset: keep them forever.",
    )
    retention_batch_size: int = Field(
        5000, ge=1, description="Rows deleted per statement when retention deletes row by row."
    )
    log_level: str = Field("INFO", description="Application log level.")

    @field_validator("alert_webhook_urls", "alert_thresholds_percent", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("retention_bodies_days", "retention_records_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # METERGATE_RETENTION_…= in a compose .env

    @field_validator("alert_thresholds_percent")
    @classmethod
    def _check_thresholds(cls, value: list[int]) -> list[int]:
        if any(percent <= 0 for percent in value):
            raise ValueError("alert thresholds are positive percentages")
        return sorted(set(value))

    @model_validator(mode="after")
    def _bodies_go_first(self) -> Settings:
        bodies, records = self.retention_bodies_days, self.retention_records_days
        if bodies is not None and records is not None and bodies > records:
            raise ValueError("bodies cannot be kept longer than their records")
        return self

    otel_endpoint: str = Field(
        "",
        validation_alias=AliasChoices("METERGATE_OTEL_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector base URL (traces go to <url>/v1/traces); also read "
        "from the standard OTEL_EXPORTER_OTLP_ENDPOINT. Unset: tracing is off.",
    )
    otel_service_name: str = Field(
        "metergate-proxy", description="service.name of the proxy's OpenTelemetry traces."
    )
    jwt_issuer: str = Field(
        "",
        description="Issuer (iss) of the OIDC/JWT bearer tokens the proxy accepts besides "
        "gateway keys. Unset: tokens are not accepted.",
    )
    jwt_audience: str = Field(
        "", description="Audience (aud) the tokens must carry (unset: aud is not checked)."
    )
    jwks_url: str = Field(
        "",
        description="Where the issuer's signing keys are published (unset: jwks_uri from the "
        "issuer's /.well-known/openid-configuration).",
    )
    jwt_algorithms: str = Field(
        "RS256,ES256", description="Comma-separated signature algorithms tokens may use."
    )
    jwt_tenant_claim: str = Field(
        "metergate_tenant", description="Claim naming the caller's tenant (an existing one)."
    )
    jwt_user_claim: str = Field(
        "email",
        description="Claim naming the caller's user; a user of that name in the tenant is "
        "created on first use.",
    )
    jwt_tier_claim: str = Field(
        "metergate_tier",
        description="Claim naming the caller's tier (an existing one); absent: the user's tier, "
        "else METERGATE_JWT_DEFAULT_TIER.",
    )
    jwt_default_tenant: str = Field(
        "", description="Tenant of tokens without the tenant claim (unset: such tokens get 403)."
    )
    jwt_default_tier: str = Field(
        "",
        description="Tier of users created from tokens without the tier claim (unset: such "
        "tokens of unknown users get 403).",
    )
    jwks_min_refresh_seconds: float = Field(
        30.0,
        ge=0,
        description="Shortest time between two JWKS fetches forced by tokens with an unknown "
        "key id (a rotated key is picked up at most this late; the JWKS is refetched every "
        "5 minutes anyway).",
    )
    jwt_leeway_seconds: int = Field(
        30, ge=0, description="Clock skew allowed when checking a token's exp, nbf and iat."
    )
    sentry_dsn: SecretStr = Field(
        SecretStr(""),
        description="Sentry DSN for reports of the proxy's unexpected errors (no request "
        "bodies, keys or personal data are sent). Unset: off.",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return value

    @property
    def effective_database_url(self) -> str:
        """The database URL in force: the configured one, or the SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metergate.sqlite3').resolve()}"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

    @property
    def is_embedded(self) -> bool:
        return not self.redis_url


def normalise_database_url(url: str) -> str:
    """Map the plain ``postgresql://`` form hosting platforms hand out to psycopg 3."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url
