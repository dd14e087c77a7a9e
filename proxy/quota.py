"""Stage: monthly quotas and spending caps, reserved before the upstream call, settled after.

    reserve   the call's most (prompt estimate + max_tokens clamped to the ceiling, at the
              dearest price of the model and its fallbacks) is held in every scope at
              once, in one Redis round trip: the user (monthly tokens and
              USD: user override, else tier), the key (its own overrides), the end user
              (the key's end-user tier), the tenant (its cap), the deployment (global cap).
              A scope that cannot hold it refuses the call: QuotaExceeded (429,
              ``insufficient_quota``, ``x-should-retry: false``).
    settle    the actual usage replaces the hold at once, so unused headroom is free for
              the next call; a failed call settles at zero (a release).

Every scope is counted, limited or not, so a cap set mid-month applies to the month's
real usage. Holds carry a deadline (``reservation_ttl_seconds``) after which a crashed
call's hold is dropped. Counters are rebuilt from the SQL log when the month's marker
is missing (Redis emptied, or a new month): one process rebuilds under a lock (after
a grace of a few record-writer flushes, so the records of calls that ended as Redis
went away are in the log), the others wait for it, and the call goes on once the
counters are there. Redis unreachable: 503 ``quota_unavailable``, or with
``limits_fail_open`` no hold at all (the ledger still records the call, and the next
rebuild counts it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import Redis, RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from proxy.charge import Charge
from proxy.config_cache import ConfigCache, EffectiveLimits, Principal
from proxy.errors import GatewayError, QuotaExceeded
from proxy.quota_store import (
    CountersMissing,
    Hold,
    MemoryQuotaStore,
    QuotaStore,
    RedisQuotaStore,
    Shortfall,
    log_settle_failure,
)
from proxy.script_batch import ScriptBatch
from shared.catalogue import ModelEntry
from shared.pricing import format_usd
from shared.settings import Settings
from shared.usage import MonthUsage, Spent, month_of, month_usage, next_month_start

log = logging.getLogger(__name__)

USD_UNITS = 10**8  # counters hold integer units of 1e-8 USD, the ledger's precision
KEEP_AFTER_MONTH = timedelta(days=7)
REBUILD_LOCK_SECONDS = 60.0
REBUILD_WAIT_SECONDS = 15.0
REBUILD_POLL_SECONDS = 0.05


def to_units(usd: Decimal) -> int:
    return int((usd * USD_UNITS).to_integral_value())


def from_units(units: int) -> Decimal:
    return Decimal(units) / USD_UNITS


@dataclass(frozen=True, slots=True)
class Scope:
    """One counted scope of a call: its name in the store, its limits, how to name it."""

    name: str
    token_limit: int | None
    usd_limit: Decimal | None
    label: str  # "the monthly USD budget of user ..." is built from it
    is_cap: bool = False  # tenant and global caps are named as caps
    is_private: bool = False  # the global cap's figures are not the caller's business


@dataclass(slots=True)
class Reservation:
    """A call's hold; ``settle`` consumes it (once)."""

    id: str
    month: str
    scopes: tuple[str, ...]
    tokens: int
    usd: int
    is_settled: bool = False


def scopes_for(
    principal: Principal, end_user: str | None, global_cap: Decimal | None
) -> list[Scope]:
    """Narrowest first, so a refusal names the most specific limit that is spent."""
    scopes: list[Scope] = []
    if end_user:
        limits = principal.end_user_limits
        scopes.append(
            _scope(f"enduser:{principal.key_id}:{end_user}", limits, f"end user '{end_user}'")
        )
    scopes.append(
        _scope(f"key:{principal.key_id}", principal.key_limits, f"key {principal.key_prefix}…")
    )
    scopes.append(
        _scope(f"user:{principal.user_id}", principal.user_limits, f"user {principal.user_email}")
    )
    scopes.append(
        Scope(
            f"tenant:{principal.tenant_id}",
            None,
            principal.tenant_monthly_usd,
            f"tenant {principal.tenant_name}",
            is_cap=True,
        )
    )
    scopes.append(
        Scope("global", None, global_cap, "this deployment", is_cap=True, is_private=True)
    )
    return scopes


def _scope(name: str, limits: EffectiveLimits | None, label: str) -> Scope:
    if limits is None:
        return Scope(name, None, None, label)
    return Scope(name, limits.monthly_tokens, limits.monthly_usd, label)


class Quotas:
    """Reservations and settlements against one store; the SQL log to rebuild it from."""

    def __init__(
        self,
        store: QuotaStore,
        engine: Engine,
        config: ConfigCache,
        *,
        reservation_ttl_seconds: float = 900.0,
        is_fail_open: bool = False,
        rebuild_grace_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._engine = engine
        self._config = config
        self._ttl = reservation_ttl_seconds
        self._is_fail_open = is_fail_open  # store unreachable: let calls through, unheld
        self._rebuild_grace = rebuild_grace_seconds
        self._clock = clock

    def reserve(
        self,
        reservation_id: str,
        principal: Principal,
        end_user: str | None,
        models: Sequence[ModelEntry],
        charge: Charge,
    ) -> Reservation | None:
        """Hold ``charge`` (at the dearest of ``models``) in every scope, or raise QuotaExceeded.

        The store unreachable (or its counters missing and the SQL log down): 503
        ``quota_unavailable``, or, failing open, None: the call goes on unheld (logged).
        """
        return self.begin_reserve(reservation_id, principal, end_user, models, charge, None)(True)

    def begin_reserve(
        self,
        reservation_id: str,
        principal: Principal,
        end_user: str | None,
        models: Sequence[ModelEntry],
        charge: Charge,
        batch: ScriptBatch | None,
    ) -> Callable[[bool], Reservation | None]:
        """``reserve`` in two steps: its store round trip queued in ``batch`` (on Redis),
        then the returned function, called once the batch ran, gives the reservation.

        Called with ``is_needed=False`` (the call was answered from the cache, which costs
        nothing against quotas) the function raises nothing: a hold already made is
        returned, to be released when the call settles; a shortfall or an unreachable
        store is no refusal. Without a batch the function reserves when called, and only
        if needed.
        """
        now = self._clock()
        month = month_of(datetime.fromtimestamp(now, UTC))
        scopes = scopes_for(principal, end_user, self._config.global_monthly_usd())
        usd = max(to_units(charge.price(model)) for model in models)
        holds = [
            Hold(
                scope.name,
                charge.total_tokens,
                usd,
                scope.token_limit,
                None if scope.usd_limit is None else to_units(scope.usd_limit),
            )
            for scope in scopes
        ]
        queued: Callable[[], Shortfall | None] | None = None
        if batch is not None and isinstance(self.store, RedisQuotaStore):
            queued = self.store.queue_reserve(
                month, reservation_id, holds, now + self._ttl, now, self._expire_at(month), batch
            )
        reservation = Reservation(
            reservation_id, month, tuple(s.name for s in scopes), charge.total_tokens, usd
        )

        def finish(is_needed: bool) -> Reservation | None:
            if not is_needed:  # answered from the cache: only a hold already made matters
                try:
                    return reservation if queued is not None and queued() is None else None
                except (RedisError, CountersMissing):
                    return None
            try:
                shortfall = self._queued_or_reserved(queued, month, reservation_id, holds, now)
            except (RedisError, SQLAlchemyError, CountersMissing) as exc:
                if not self._is_fail_open:
                    raise _store_down() from exc
                log.warning("event=quota_unavailable policy=fail_open error=%s", type(exc).__name__)
                return None
            if shortfall is not None:
                raise quota_refusal(scopes[shortfall.index], shortfall, charge, usd, month, now)
            return reservation

        return finish

    def _queued_or_reserved(
        self,
        queued: Callable[[], Shortfall | None] | None,
        month: str,
        reservation_id: str,
        holds: list[Hold],
        now: float,
    ) -> Shortfall | None:
        """The queued reservation's outcome; reserved here when none was queued, or when
        the month's counters were missing (``_reserve`` builds them first)."""
        if queued is not None:
            try:
                return queued()
            except CountersMissing:
                pass
        return self._reserve(month, reservation_id, holds, now)

    def settle(
        self,
        reservation: Reservation,
        tokens: int,
        cost_usd: Decimal,
        batch: ScriptBatch | None = None,
    ) -> None:
        """Replace the hold by the actual usage (zero for a failed call). Never raises.

        With a ``batch`` (on Redis) the settle is queued in it, to go with the call's
        other last scripts in one round trip."""
        if reservation.is_settled:
            return
        reservation.is_settled = True
        try:
            self.store.settle(
                reservation.month,
                reservation.id,
                reservation.scopes,
                max(tokens, 0),
                max(to_units(cost_usd), 0),
                self._expire_at(reservation.month),
                batch,
            )
        except RedisError as exc:  # the hold expires by itself; the ledger keeps the cost
            log_settle_failure(reservation.id, exc)

    def rebuild(self, month: str | None = None) -> MonthUsage:
        """Load a month's counters (default: this one) from the SQL log into the store."""
        month = month or month_of(datetime.fromtimestamp(self._clock(), UTC))
        usage = month_usage(self._engine, month)
        spent: dict[str, tuple[int, int]] = {"global": _pair(usage.total)}
        spent.update({f"user:{owner}": _pair(s) for owner, s in usage.users.items()})
        spent.update({f"key:{owner}": _pair(s) for owner, s in usage.keys.items()})
        spent.update({f"tenant:{owner}": _pair(s) for owner, s in usage.tenants.items()})
        spent.update(
            {f"enduser:{key}:{who}": _pair(s) for (key, who), s in usage.end_users.items()}
        )
        self.store.replace(month, spent, self._expire_at(month))
        log.info("event=quota_rebuilt month=%s scopes=%d", month, len(spent))
        return usage

    def _reserve(
        self, month: str, reservation_id: str, holds: list[Hold], now: float
    ) -> Shortfall | None:
        deadline = now + self._ttl
        expire_at = self._expire_at(month)
        try:
            return self.store.reserve(month, reservation_id, holds, deadline, now, expire_at)
        except CountersMissing:
            self._ensure_built(month)  # SQLAlchemyError: the ledger is down, nothing to count
        # CountersMissing again: another process is still rebuilding them.
        return self.store.reserve(month, reservation_id, holds, deadline, now, expire_at)

    def _ensure_built(self, month: str) -> None:
        """Rebuild the month's counters here, or wait (bounded) for the process that is."""
        if self.store.try_lock(month, REBUILD_LOCK_SECONDS):
            try:
                if not self.store.is_built(month):
                    # Calls that ended just before (their settle lost with Redis, or failed)
                    # reach the SQL log within the record writers' flush interval: wait
                    # for them, so the rebuilt counters include them.
                    time.sleep(self._rebuild_grace)
                    self.rebuild(month)
            finally:
                self.store.unlock(month)
            return
        deadline = time.monotonic() + REBUILD_WAIT_SECONDS
        while not self.store.is_built(month) and time.monotonic() < deadline:
            time.sleep(REBUILD_POLL_SECONDS)  # another process is reading the SQL log

    def _expire_at(self, month: str) -> int:
        return int((next_month_start(month) + KEEP_AFTER_MONTH).timestamp())


def _pair(spent: Spent) -> tuple[int, int]:
    return spent.tokens, to_units(spent.usd)


def _store_down() -> GatewayError:
    return GatewayError(
        "The gateway cannot check your quota right now; please retry shortly.",
        status=503,
        code="quota_unavailable",
        headers={"Retry-After": "1"},
    )


def quota_refusal(
    scope: Scope, shortfall: Shortfall, charge: Charge, usd: int, month: str, now: float
) -> QuotaExceeded:
    """The 429 for a spent quota: which limit, how far it is used, when it resets."""
    resets = next_month_start(month)
    if shortfall.measure == "tokens":
        limit_units = scope.token_limit or 0
        what = f"the monthly token quota of {scope.label} ({scope.token_limit} tokens)"
        detail = (
            f"{shortfall.spent} used, {shortfall.held} held by calls in progress, "
            f"this call may use up to {charge.total_tokens}"
        )
    else:
        limit_units = to_units(scope.usd_limit or Decimal(0))
        limit = _usd(limit_units)
        if scope.is_private:
            what = f"the global cap of {scope.label}"
        elif scope.is_cap:
            what = f"the tenant cap of {scope.label} (${limit} a month)"
        else:
            what = f"the monthly USD budget of {scope.label} (${limit} a month)"
        detail = (
            f"${_usd(shortfall.spent)} used, ${_usd(shortfall.held)} held by calls in "
            f"progress, this call may cost up to ${_usd(usd)}"
        )
    said = "" if scope.is_private else f" ({detail})"
    state = "is spent" if shortfall.spent >= limit_units else "has too little left for this call"
    message = (
        f"You exceeded your current quota: {what} {state} in {month}{said}. "
        f"It resets on {resets.date().isoformat()} (UTC)."
    )
    retry_after = max(1, int(resets.timestamp() - now))
    return QuotaExceeded(
        message,
        openai_type="insufficient_quota",
        headers={"x-should-retry": "false", "Retry-After": str(retry_after)},
    )


def _usd(units: int) -> str:
    """Dollars without trailing zeros past the cents: 0.5 -> "0.50", 0.00012 -> "0.00012"."""
    whole, _, fraction = format_usd(from_units(units)).partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def build_quotas(
    settings: Settings, engine: Engine, config: ConfigCache, redis: Redis | None
) -> Quotas:
    """Quotas on the app's Redis, or in process in the embedded mode."""
    store: QuotaStore = RedisQuotaStore(redis) if redis is not None else MemoryQuotaStore()
    return Quotas(
        store,
        engine,
        config,
        reservation_ttl_seconds=settings.reservation_ttl_seconds,
        is_fail_open=settings.limits_fail_open,
        # In process the counters start with the process: no call of it can be in flight.
        rebuild_grace_seconds=0.5 + 2 * settings.record_flush_seconds if redis else 0.0,
    )
