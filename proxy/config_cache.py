"""Keys, tiers and prices cached in each process, dropped when the config version moves.

The hot path never waits on SQL for config it has seen: a key is looked up
once, then served from memory. A background thread reads the config version
(from SQL, one indexed row) every ``config_poll_seconds`` and
clears the cache when it changed, so a revoked key stops working on every
process within that interval plus one lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from proxy.errors import GatewayError
from shared.accounts import CONFIG_STATE_ID, get_global_monthly_usd
from shared.catalogue import ModelEntry
from shared.keys import hash_key
from shared.models import ApiKey, ConfigState, LimitsMixin, ModelPrice, Tenant, Tier, User
from shared.screening import (
    CompiledRule,
    RuleSpec,
    compile_rules,
    load_rule_specs,
    rules_for_tenant,
)

if TYPE_CHECKING:
    from proxy.jwt_auth import TokenAuth

log = logging.getLogger(__name__)
T = TypeVar("T")

NEGATIVE_CACHE_SECONDS = 2.0
MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """Limits in force for one key: key override, else user override, else tier."""

    rpm: int | None
    tpm: int | None
    monthly_tokens: int | None
    monthly_usd: Decimal | None
    max_tokens: int | None
    cache_ttl_seconds: int | None


NO_LIMITS = EffectiveLimits(None, None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key and the user, tenant and tier behind it."""

    key_id: int
    key_prefix: str
    key_hash: str
    environment: str
    expires_at: datetime | None
    is_revoked: bool
    user_id: int
    user_email: str
    tenant_id: int
    tenant_name: str
    tenant_monthly_usd: Decimal | None
    tier_name: str
    limits: EffectiveLimits
    allowed_models: frozenset[str] | None  # None: every model in the catalogue
    # Rate limits and quotas are counted per scope, and a call must fit every scope:
    # the user's (user override, else tier), the key's own overrides (narrowing one key
    # within its user's allowance), and each end user's (the key's end-user tier).
    user_limits: EffectiveLimits = NO_LIMITS
    key_limits: EffectiveLimits = NO_LIMITS
    end_user_limits: EffectiveLimits | None = None  # None: the key has no end-user tier
    # The gateway marks long system prompts for Anthropic's prompt cache (tier setting).
    is_prompt_cache_marked: bool = False
    # Screening, from the tier: estimated prompt-token ceiling; moderation "flag"/"block".
    max_prompt_tokens: int | None = None
    moderation_action: str | None = None
    # How much of the bodies the request log keeps: "full", "redacted" or "none" (tenant).
    body_storage: str = "full"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def _pick(key_value: T | None, user_value: T | None, tier_value: T | None) -> T | None:
    """The most specific value set: the key's override, else the user's, else the tier's."""
    if key_value is not None:
        return key_value
    return user_value if user_value is not None else tier_value


def _intersect(*lists: list[str] | None) -> frozenset[str] | None:
    allowed: frozenset[str] | None = None
    for names in lists:
        if names:
            allowed = frozenset(names) if allowed is None else allowed & frozenset(names)
    return allowed


def _limits_of(*rows: LimitsMixin) -> EffectiveLimits:
    """Each limit from the first row that sets it (most specific row first)."""

    def first(name: str) -> Any:
        return next((v for row in rows if (v := getattr(row, name)) is not None), None)

    return EffectiveLimits(
        rpm=first("rpm"),
        tpm=first("tpm"),
        monthly_tokens=first("monthly_tokens"),
        monthly_usd=first("monthly_usd"),
        max_tokens=first("max_tokens"),
        cache_ttl_seconds=first("cache_ttl_seconds"),
    )


def principal_from_rows(key: ApiKey, user: User, tier: Tier, tenant: Tenant) -> Principal:
    limits = EffectiveLimits(
        rpm=_pick(key.rpm, user.rpm, tier.rpm),
        tpm=_pick(key.tpm, user.tpm, tier.tpm),
        monthly_tokens=_pick(key.monthly_tokens, user.monthly_tokens, tier.monthly_tokens),
        monthly_usd=_pick(key.monthly_usd, user.monthly_usd, tier.monthly_usd),
        max_tokens=_pick(key.max_tokens, user.max_tokens, tier.max_tokens),
        cache_ttl_seconds=_pick(
            key.cache_ttl_seconds, user.cache_ttl_seconds, tier.cache_ttl_seconds
        ),
    )
    return Principal(
        key_id=key.id,
        key_prefix=key.prefix,
        key_hash=key.secret_hash,
        environment=key.environment,
        expires_at=key.expires_at,
        is_revoked=key.revoked_at is not None,
        user_id=user.id,
        user_email=user.email,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        tenant_monthly_usd=tenant.monthly_usd,
        tier_name=tier.name,
        limits=limits,
        allowed_models=_intersect(key.models, user.models, tier.models),
        user_limits=_limits_of(user, tier),
        key_limits=_limits_of(key),
        end_user_limits=_limits_of(key.end_user_tier) if key.end_user_tier else None,
        is_prompt_cache_marked=bool(tier.is_prompt_cache_marked),
        max_prompt_tokens=tier.max_prompt_tokens,
        moderation_action=tier.moderation_action,
        body_storage=tenant.body_storage,
    )


class ConfigCache:
    """Per-process cache of principals (by key hash) and the model catalogue."""

    def __init__(
        self,
        engine: Engine,
        *,
        read_version: Callable[[], int | None] | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self._engine = engine
        self._read_version = read_version or self._read_sql_version
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._version: int | None = None
        self._principals: dict[str, Principal] = {}
        self._misses: dict[str, float] = {}
        self._models: dict[str, ModelEntry] | None = None
        self._global_cap: tuple[Decimal | None] | None = None  # (cap,) once read
        self._rule_specs: list[RuleSpec] | None = None
        self._rules: dict[int, tuple[CompiledRule, ...]] = {}
        self._identities: dict[Hashable, Principal] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Bearer tokens of an identity provider (proxy.jwt_auth); None: gateway keys only.
        self.tokens: TokenAuth | None = None

    # -- lookups (hot path) ---------------------------------------------------------

    def principal_for(self, secret: str) -> Principal | None:
        """The principal for a presented key, or None if no such key exists."""
        digest = hash_key(secret)
        principal = self._principals.get(digest)
        if principal is not None:
            return principal
        missed_at = self._misses.get(digest)
        if missed_at is not None and time.monotonic() - missed_at < NEGATIVE_CACHE_SECONDS:
            return None
        principal = self._load_principal(digest)
        with self._lock:
            if principal is None:
                if len(self._misses) > MAX_CACHED_KEYS:
                    self._misses.clear()
                self._misses[digest] = time.monotonic()
            else:
                if len(self._principals) > MAX_CACHED_KEYS:
                    self._principals.clear()
                self._principals[digest] = principal
        return principal

    def principal_of(self, identity: Hashable, load: Callable[[Session], Principal]) -> Principal:
        """The principal of a caller known by something other than a key (a token's tenant,
        user and tier), built by ``load`` on first sight and kept until the config moves.
        What ``load`` raises (a GatewayError) is not cached."""
        principal = self._identities.get(identity)
        if principal is not None:
            return principal
        with self._reading() as session:
            principal = load(session)
        with self._lock:
            if len(self._identities) > MAX_CACHED_KEYS:
                self._identities.clear()
            self._identities[identity] = principal
        return principal

    def models(self) -> dict[str, ModelEntry]:
        models = self._models
        if models is None:
            with self._reading() as session:
                rows = session.scalars(select(ModelPrice)).all()
                models = {row.name: ModelEntry.from_row(row) for row in rows}
            self._models = models
        return models

    def model(self, name: str) -> ModelEntry | None:
        return self.models().get(name)

    def global_monthly_usd(self) -> Decimal | None:
        """The deployment's monthly USD cap (None: no cap); cached like the rest."""
        cached = self._global_cap
        if cached is None:
            with self._reading() as session:
                cached = (get_global_monthly_usd(session),)
            self._global_cap = cached
        return cached[0]

    def screening_rules(self, tenant_id: int) -> tuple[CompiledRule, ...]:
        """The compiled screening rules in force for a tenant (blocking ones first)."""
        rules = self._rules.get(tenant_id)
        if rules is None:
            specs = self._rule_specs
            if specs is None:
                with self._reading() as session:
                    specs = load_rule_specs(session)
                self._rule_specs = specs
            rules = compile_rules(rules_for_tenant(specs, tenant_id))
            with self._lock:
                if len(self._rules) > MAX_CACHED_KEYS:
                    self._rules.clear()
                self._rules[tenant_id] = rules
        return rules

    # -- invalidation ---------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self._principals = {}
            self._identities = {}
            self._misses = {}
            self._models = None
            self._global_cap = None
            self._rule_specs = None
            self._rules = {}

    def check_version(self) -> bool:
        """Read the config version; clear the cache if it moved. True if it did."""
        version = self._read_version()
        if version == self._version:
            return False
        self._version = version
        self.clear()
        return True

    def start(self) -> None:
        """Start the polling thread (once per process, after any fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._version is None:
            # The version to start from, read now: else the first poll would clear what the
            # first calls cached, and a database outage right then would refuse them.
            try:
                self.check_version()
            except Exception as exc:  # the polling thread reads it once the database answers
                log.warning("event=config_poll_failed error=%s", type(exc).__name__)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="config-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                if self.check_version():
                    log.info("event=config_changed version=%s", self._version)
            except Exception as exc:  # keep polling through outages; say so once per failure
                log.warning("event=config_poll_failed error=%s", type(exc).__name__)

    def _read_sql_version(self) -> int | None:
        # Core, not an ORM session: this runs every second in every process.
        with self._engine.connect() as connection:
            version: int | None = connection.scalar(
                select(ConfigState.version).where(ConfigState.id == CONFIG_STATE_ID)
            )
            return version

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A session for a config read on the hot path: 503 ``config_unavailable`` when the
        database cannot answer (what is cached keeps serving meanwhile)."""
        try:
            # Catch up with the version first: what is read now is at least that new, so
            # the next poll does not drop it (and refuse it, were the database gone by then).
            self.check_version()
            with Session(self._engine) as session:
                yield session
        except SQLAlchemyError as exc:
            raise GatewayError(
                "The gateway cannot read its configuration right now; please retry shortly.",
                status=503,
                code="config_unavailable",
                headers={"Retry-After": "1"},
            ) from exc

    def _load_principal(self, digest: str) -> Principal | None:
        with self._reading() as session:
            row = session.execute(
                select(ApiKey, User, Tier, Tenant)
                .join(User, ApiKey.user_id == User.id)
                .join(Tier, User.tier_id == Tier.id)
                .join(Tenant, User.tenant_id == Tenant.id)
                .where(ApiKey.secret_hash == digest)
            ).first()
            if row is None:
                return None
            return principal_from_rows(*row)
