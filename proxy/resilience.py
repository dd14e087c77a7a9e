"""Stage: the resilient upstream call — retries, a circuit breaker per upstream, fallbacks.

``Resilience.call(chain, send, attempts)`` tries the requested model, then each of
its fallbacks (``fallback_chain``), in order. For each model:

1. its breaker (provider + upstream model) must admit the call: closed, or the one
   probe of a half-open breaker. An open breaker skips the model at once.
2. the headroom tracker (``proxy.headroom``) may hold the call until the provider's
   rate-limit window resets — unless that reset lies past the deadline.
3. a retryable failure — 429, 500, 502, 503, 504, 529, a timeout, a dropped
   connection — is retried after exponential backoff with full jitter, never sooner
   than the upstream's ``retry-after-ms`` / ``retry-after``, up to ``max_attempts``
   attempts per model; then the next model is tried.
4. any other failure (a 4xx, no provider key) ends the call at once: the request or
   the gateway's setup is at fault, and no retry or other model would fare better.

Nothing sleeps past the overall deadline, and each attempt's timeouts are cut to what
is left of it. Every attempt is appended to ``attempts`` (the record's list).

The breakers (``proxy.breaker``) count a 5xx / 529, a timeout or a dropped connection
as a failure. A 429 counts neither way (the upstream is healthy but busy: retry-after
and the headroom tracker deal with it); any other answer, a 4xx included, shows the
upstream alive.

Breaker and headroom state live on the app, one per process: each proxy process learns
an upstream's health by itself. Both are thread-safe.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

from proxy.breaker import Admission, BreakerBoard, Outcome, UpstreamKey
from proxy.errors import UpstreamFailure
from proxy.headroom import HeadroomTracker
from proxy.providers.base import (
    UpstreamError,
    UpstreamHttpError,
    UpstreamNotConfigured,
    UpstreamTimeout,
)
from proxy.upstream import failure_for
from shared.catalogue import ModelEntry
from shared.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
BUSY_STATUS = 429


def outcome_of(error: UpstreamError | None) -> Outcome:
    """What an attempt (None: it succeeded) tells the breaker about the upstream."""
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, UpstreamNotConfigured):
        return Outcome.NEUTRAL
    if isinstance(error, UpstreamHttpError):
        if error.status == BUSY_STATUS:
            return Outcome.NEUTRAL
        return Outcome.FAILURE if error.status >= 500 else Outcome.SUCCESS
    return Outcome.FAILURE


def is_retryable(error: UpstreamError) -> bool:
    """429 / 500 / 502 / 503 / 504 / 529, timeouts and dropped connections — unless the
    provider says ``x-should-retry: false`` (as both SDKs honour it)."""
    if isinstance(error, UpstreamNotConfigured):
        return False
    if isinstance(error, UpstreamHttpError):
        if error.headers.get("x-should-retry", "").lower() == "false":
            return False
        return error.status in RETRYABLE_STATUSES
    return True


def retry_after_seconds(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """The upstream's requested wait: ``retry-after-ms``, else ``retry-after`` (seconds or
    an HTTP date). None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            milliseconds = float(raw_ms)
        except ValueError:
            milliseconds = math.nan
        if milliseconds >= 0:
            return milliseconds / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - now_epoch
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if seconds == seconds else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3  # per model, the first attempt included
    base_seconds: float = 0.25
    max_seconds: float = 8.0
    deadline_seconds: float = 60.0

    def backoff_seconds(self, retry: int, draw: float) -> float:
        """Full jitter: ``draw`` (uniform in [0, 1)) times min(cap, base * 2**retry)."""
        growth = float(2 ** min(retry, 30))
        return draw * min(self.max_seconds, self.base_seconds * growth)

    def delay_seconds(self, retry: int, draw: float, retry_after: float | None) -> float:
        """The wait before retry number ``retry`` (0 for the first): the backoff, but never
        less than the upstream's retry-after (which may exceed the cap)."""
        backoff = self.backoff_seconds(retry, draw)
        return backoff if retry_after is None else max(backoff, retry_after)


class Answered(Protocol):
    """What ``send`` returns: an upstream answer's status and (lower-case) headers."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


R = TypeVar("R", bound=Answered)


@dataclass(slots=True)
class Attempt:
    """One upstream attempt as the record shows it."""

    model: str
    latency_ms: float = 0.0
    status: int | None = None
    error: str | None = None  # "timeout", "unreachable", "not_configured", "circuit_open"
    retry_after: float | None = None  # seconds the upstream (or the breaker) asked to wait
    held_ms: float | None = None  # time held back by the headroom tracker before it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.status is not None:
            out["status"] = self.status
        if self.error is not None:
            out["error"] = self.error
        out["latency_ms"] = round(self.latency_ms, 2)
        if self.retry_after is not None:
            out["retry_after"] = round(self.retry_after, 3)
        if self.held_ms is not None:
            out["held_ms"] = round(self.held_ms, 2)
        return out


def fallback_chain(
    primary: ModelEntry,
    lookup: Callable[[str], ModelEntry | None],
    may_use: Callable[[str], bool],
    can_serve: Callable[[ModelEntry], bool] | None = None,
) -> list[ModelEntry]:
    """The models to try: ``primary``, then its fallbacks that exist, the key may use and
    ``can_serve`` accepts — by default those of the same provider; a model of another
    provider needs the call translated (``proxy.translate``), which only some endpoints
    can. Fallbacks of fallbacks are not followed."""
    chain = [primary]
    for name in primary.fallbacks:
        model = lookup(name)
        if model is None or not may_use(name):
            continue
        is_servable = can_serve(model) if can_serve else model.provider == primary.provider
        if not is_servable:
            continue
        if all(model.name != seen.name for seen in chain):
            chain.append(model)
    return chain


def circuit_open(retry_after: float) -> UpstreamFailure:
    return UpstreamFailure(
        "The provider has been failing; the gateway stopped calling it for a short while.",
        status=503,
        code="upstream_unavailable",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class _ModelFailed(Exception):
    """Internal: one model of the chain is done for (retries spent, breaker open, deadline)."""

    def __init__(self, error: UpstreamError | None, open_seconds: float | None = None) -> None:
        super().__init__("model failed")
        self.error = error
        self.open_seconds = open_seconds


class Resilience:
    """Retry policy, breakers and headroom of one app. ``sleep``, ``clock``, ``draw`` (the
    jitter's uniform [0, 1) source) and ``epoch_clock`` are injectable for tests."""

    def __init__(
        self,
        policy: RetryPolicy,
        breakers: BreakerBoard,
        headroom: HeadroomTracker,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        epoch_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.breakers = breakers
        self.headroom = headroom
        self._sleep = sleep
        self._clock = clock
        self._draw = draw
        self._epoch_clock = epoch_clock

    @classmethod
    def default(cls) -> Resilience:
        """The documented defaults (what ``from_settings`` gives with no settings)."""
        return cls(RetryPolicy(), BreakerBoard(5, 30.0), HeadroomTracker(2, 2000))

    @classmethod
    def from_settings(cls, settings: Settings) -> Resilience:
        policy = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            deadline_seconds=settings.upstream_deadline_seconds,
        )
        breakers = BreakerBoard(
            settings.breaker_failure_threshold,
            settings.breaker_cooldown_seconds,
            probe_timeout_seconds=settings.upstream_deadline_seconds,
        )
        headroom = HeadroomTracker(
            settings.upstream_min_remaining_requests, settings.upstream_min_remaining_tokens
        )
        return cls(policy, breakers, headroom)

    def call(
        self,
        chain: Sequence[ModelEntry],
        send: Callable[[ModelEntry, float], R],
        attempts: list[dict[str, Any]],
    ) -> tuple[ModelEntry, R]:
        """``send(model, seconds_left)`` through the chain; returns the model that answered
        and its answer. ``send`` raises UpstreamError subclasses only.

        Raises GatewayError: at once for a non-retryable failure; else, once every model
        is done for, the last upstream failure (502 / 503 / 504), or 503
        ``upstream_unavailable`` with Retry-After when every breaker was open.
        """
        deadline = self._clock() + self.policy.deadline_seconds
        last_error: UpstreamError | None = None
        open_for: list[float] = []
        for index, model in enumerate(chain):
            if index and self._clock() >= deadline:
                break
            if index:
                log.info("event=upstream_fallback from=%s to=%s", chain[index - 1].name, model.name)
            try:
                return model, self._call_model(model, send, deadline, attempts)
            except _ModelFailed as failed:
                last_error = failed.error or last_error
                if failed.open_seconds is not None:
                    open_for.append(failed.open_seconds)
        if last_error is not None:
            raise failure_for(last_error) from last_error
        if open_for:
            raise circuit_open(min(open_for))
        raise UpstreamFailure(  # defensive: the first model is always tried
            "The gateway's upstream deadline ran out.", status=504, code="upstream_timeout"
        )

    def _call_model(
        self,
        model: ModelEntry,
        send: Callable[[ModelEntry, float], R],
        deadline: float,
        attempts: list[dict[str, Any]],
    ) -> R:
        key: UpstreamKey = (model.provider, model.upstream_model)
        last: UpstreamError | None = None
        for retry in range(self.policy.max_attempts):
            admission = self.breakers.admit(key)
            if not admission.is_allowed:
                refused = Attempt(
                    model.name, error="circuit_open", retry_after=admission.retry_after_seconds
                )
                attempts.append(refused.to_json())
                raise _ModelFailed(last, admission.retry_after_seconds)
            attempt = Attempt(model.name, held_ms=self._hold_for_headroom(key, deadline))
            result, error = self._attempt(model, key, admission, send, deadline, attempt)
            attempts.append(attempt.to_json())
            if error is None:
                assert result is not None
                return result
            if not is_retryable(error):
                raise failure_for(error) from error
            last = error
            if retry + 1 >= self.policy.max_attempts:
                break
            delay = self.policy.delay_seconds(retry, self._draw(), attempt.retry_after)
            if self._clock() + delay >= deadline:
                log.info("event=upstream_deadline model=%s delay_s=%.3f", model.name, delay)
                break
            log.info(
                "event=upstream_retry model=%s attempt=%d failure=%s delay_s=%.3f",
                model.name,
                retry + 1,
                attempt.status or attempt.error,
                delay,
            )
            self._sleep(delay)
        raise _ModelFailed(last)

    def _attempt(
        self,
        model: ModelEntry,
        key: UpstreamKey,
        admission: Admission,
        send: Callable[[ModelEntry, float], R],
        deadline: float,
        attempt: Attempt,
    ) -> tuple[R | None, UpstreamError | None]:
        """One call; fills ``attempt`` and tells the breaker and the headroom tracker."""
        started = self._clock()
        outcome = Outcome.NEUTRAL  # a bug in ``send`` must still free a half-open probe
        try:
            result = send(model, max(deadline - started, 0.001))
            outcome = Outcome.SUCCESS
        except UpstreamError as error:
            outcome = outcome_of(error)
            attempt.latency_ms = (self._clock() - started) * 1000.0
            attempt.error = _error_name(error)
            if isinstance(error, UpstreamHttpError):
                attempt.status = error.status
                attempt.retry_after = retry_after_seconds(error.headers, self._epoch_clock())
                self.headroom.observe(key, error.headers)
            return None, error
        finally:
            self.breakers.record(key, outcome, is_probe=admission.is_probe)
        attempt.latency_ms = (self._clock() - started) * 1000.0
        attempt.status = result.status
        self.headroom.observe(key, result.headers)
        return result, None

    def _hold_for_headroom(self, key: UpstreamKey, deadline: float) -> float | None:
        """Wait for the provider's window to reset when its headroom is nearly gone, unless
        the reset lies past the deadline (then call now; a 429 will say how long)."""
        wait = self.headroom.wait_seconds(key)
        if wait <= 0 or self._clock() + wait >= deadline:
            return None
        log.info("event=upstream_held provider=%s model=%s wait_s=%.3f", *key, wait)
        self._sleep(wait)
        return wait * 1000.0


def _error_name(error: UpstreamError) -> str | None:
    if isinstance(error, UpstreamHttpError):
        return None
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamNotConfigured):
        return "not_configured"
    return "unreachable"
