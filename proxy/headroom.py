"""Slow down before the provider's rate-limit headroom runs out.

Every upstream answer (errors included) carries the provider's budget for the
current window:

    OpenAI      x-ratelimit-remaining-{requests,tokens}, x-ratelimit-reset-* ("1m6.5s", "20ms")
    Anthropic   anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining,
                ...-reset (an RFC 3339 time)

The tracker keeps the last budget seen per upstream (provider + model: both
providers count limits per model) and, when fewer requests or tokens are left
than a small threshold, tells the caller how long to hold a new call: until
that window resets. Deliberately simple: no token estimate per call, no queue
— every held call goes once the window has reset, and the provider's own 429
plus ``retry-after`` remains the backstop. State is per process, thread-safe.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime

OPENAI_PREFIX = "x-ratelimit-"
ANTHROPIC_PREFIX = "anthropic-ratelimit-"
REQUEST_DIMENSIONS = ("requests",)
TOKEN_DIMENSIONS = ("tokens", "input-tokens", "output-tokens")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass(frozen=True, slots=True)
class Budget:
    """One rate-limit dimension as last reported by the provider."""

    remaining: int
    reset_at: float  # on the tracker's monotonic clock


def parse_duration_seconds(text: str) -> float | None:
    """OpenAI's reset format ("350ms", "12.5s", "6m0s", "1h2m3s") in seconds; None if unreadable."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def parse_reset_seconds(text: str, now_epoch: float) -> float | None:
    """Seconds until a reset given as an OpenAI duration or an RFC 3339 time."""
    duration = parse_duration_seconds(text)
    if duration is not None:
        return duration
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - now_epoch


def read_budgets(headers: Mapping[str, str], now_epoch: float) -> dict[str, tuple[int, float]]:
    """{dimension: (remaining, seconds until reset)} from either provider's headers.

    ``headers`` must have lower-case names. Dimensions without both a readable
    remaining count and a readable reset are left out.
    """
    found: dict[str, tuple[int, float]] = {}
    for dimension in REQUEST_DIMENSIONS + TOKEN_DIMENSIONS:
        for remaining_name, reset_name in (
            (f"{OPENAI_PREFIX}remaining-{dimension}", f"{OPENAI_PREFIX}reset-{dimension}"),
            (f"{ANTHROPIC_PREFIX}{dimension}-remaining", f"{ANTHROPIC_PREFIX}{dimension}-reset"),
        ):
            remaining, reset = headers.get(remaining_name), headers.get(reset_name)
            if remaining is None or reset is None or not remaining.strip().isdigit():
                continue
            seconds = parse_reset_seconds(reset, now_epoch)
            if seconds is not None:
                found[dimension] = (int(remaining), seconds)
    return found


class HeadroomTracker:
    """The last rate-limit budget seen per upstream, and how long to hold a new call."""

    def __init__(
        self,
        min_remaining_requests: int,
        min_remaining_tokens: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        epoch_clock: Callable[[], float] = time.time,
    ) -> None:
        self._minimums = {
            **dict.fromkeys(REQUEST_DIMENSIONS, min_remaining_requests),
            **dict.fromkeys(TOKEN_DIMENSIONS, min_remaining_tokens),
        }
        self._clock = clock
        self._epoch_clock = epoch_clock
        self._lock = threading.Lock()
        self._budgets: dict[Hashable, dict[str, Budget]] = {}

    def observe(self, key: Hashable, headers: Mapping[str, str]) -> None:
        """Remember the budgets an upstream answer reported (lower-case header names)."""
        read = read_budgets(headers, self._epoch_clock())
        if not read:
            return
        now = self._clock()
        fresh = {
            name: Budget(left, now + max(seconds, 0.0)) for name, (left, seconds) in read.items()
        }
        with self._lock:
            self._budgets[key] = {**self._budgets.get(key, {}), **fresh}

    def wait_seconds(self, key: Hashable) -> float:
        """How long to hold a new call to ``key``: 0 while there is headroom (or no data)."""
        now = self._clock()
        with self._lock:
            budgets = dict(self._budgets.get(key, {}))
        wait = 0.0
        for name, budget in budgets.items():
            if budget.remaining < self._minimums[name] and budget.reset_at > now:
                wait = max(wait, budget.reset_at - now)
        return wait

    def budgets(self, key: Hashable) -> dict[str, Budget]:
        """The budgets last seen for ``key`` (for tests and diagnostics)."""
        with self._lock:
            return dict(self._budgets.get(key, {}))
