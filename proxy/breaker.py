"""Circuit breakers, one per upstream (provider + upstream model), per process.

    closed --N consecutive failures--> open --cool-down--> half-open (one probe call)
    half-open --probe succeeds--> closed        half-open --probe fails--> open again

While open, ``admit`` refuses at once with the cool-down left, so callers fail fast
(or go to a fallback model). ``record`` takes each admitted call's ``Outcome``; which
upstream answers count as what is decided in ``proxy.resilience.outcome_of``. State
is per process (each proxy process learns an upstream's health by itself) and guarded
by one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

log = logging.getLogger(__name__)

UpstreamKey = tuple[str, str]  # (provider, upstream model)


class Outcome(Enum):
    """What one attempt says about the upstream's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Admission:
    is_allowed: bool
    is_probe: bool = False
    retry_after_seconds: float = 0.0  # when refused: how long until a probe may go


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    probe_started_at: float | None = None


class BreakerBoard:
    """Circuit breakers of every upstream this process calls (thread-safe).

    A probe that never reports back (its thread died) is given up after
    ``probe_timeout_seconds``, so a breaker cannot stay half-open for ever.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_seconds: float,
        *,
        probe_timeout_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self._probe_timeout = probe_timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[UpstreamKey, _Breaker] = {}

    def admit(self, key: UpstreamKey) -> Admission:
        """Whether a call to ``key`` may go now (and whether it is the half-open probe)."""
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.opened_at is None:
                return Admission(True)
            now = self._clock()
            cooling = breaker.opened_at + self.cooldown_seconds - now
            if cooling > 0:
                return Admission(False, retry_after_seconds=cooling)
            probe = breaker.probe_started_at
            if probe is not None and now - probe < self._probe_timeout:
                return Admission(False, retry_after_seconds=1.0)
            breaker.probe_started_at = now
            return Admission(True, is_probe=True)

    def record(self, key: UpstreamKey, outcome: Outcome, *, is_probe: bool = False) -> None:
        """Take the outcome of a call ``admit`` let through."""
        with self._lock:
            breaker = self._breakers.get(key)
            if outcome is Outcome.SUCCESS:
                if breaker is not None:
                    del self._breakers[key]
                    if breaker.opened_at is not None:
                        log.info("event=breaker_closed provider=%s model=%s", *key)
                return
            if breaker is None:
                if outcome is Outcome.NEUTRAL:
                    return
                breaker = self._breakers[key] = _Breaker()
            if outcome is Outcome.NEUTRAL:
                if is_probe:
                    breaker.probe_started_at = None
                return
            if breaker.opened_at is None:
                breaker.failures += 1
                if breaker.failures >= self.failure_threshold:
                    breaker.opened_at = self._clock()
                    log.warning(
                        "event=breaker_opened provider=%s model=%s failures=%d",
                        *key,
                        breaker.failures,
                    )
            elif is_probe:
                breaker.opened_at = self._clock()
                breaker.probe_started_at = None
                log.warning("event=breaker_reopened provider=%s model=%s", *key)

    def state(self, key: UpstreamKey) -> BreakerState:
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.opened_at is None:
                return BreakerState.CLOSED
            if self._clock() < breaker.opened_at + self.cooldown_seconds:
                return BreakerState.OPEN
            return BreakerState.HALF_OPEN
