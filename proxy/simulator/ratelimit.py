"""Rate-limit headers in both providers' styles.

The simulator never refuses a request by itself (that is what the `429` fault is for);
it only reports plausible budgets. Requests and tokens are counted in a fixed one-minute
window that starts with the first request after the previous window ran out, so the
`remaining` values decrease within a minute and jump back to the limit afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

WINDOW_SECONDS = 60.0


@dataclass(slots=True)
class RateWindow:
    """Requests and tokens consumed in the current one-minute window.

    `reset_at` is the window's end as an RFC 3339 UTC timestamp (Anthropic's format).
    """

    started_at: float = -WINDOW_SECONDS
    requests: int = 0
    tokens: int = 0
    reset_at: str = ""

    def consume(self, tokens: int, now: float) -> float:
        """Count one request of `tokens` at monotonic time `now`; returns the seconds
        until the window resets."""
        if now - self.started_at >= WINDOW_SECONDS:
            self.started_at = now
            self.requests = 0
            self.tokens = 0
            end = datetime.fromtimestamp(time.time() + WINDOW_SECONDS, UTC)
            self.reset_at = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.requests += 1
        self.tokens += tokens
        return max(WINDOW_SECONDS - (now - self.started_at), 0.001)


def openai_headers(
    window: RateWindow, request_limit: int, token_limit: int, tokens: int
) -> dict[str, str]:
    """`x-ratelimit-*` headers after counting a request of `tokens` tokens."""
    reset = _duration(window.consume(tokens, time.monotonic()))
    return {
        "x-ratelimit-limit-requests": str(request_limit),
        "x-ratelimit-remaining-requests": str(max(request_limit - window.requests, 0)),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": str(token_limit),
        "x-ratelimit-remaining-tokens": str(max(token_limit - window.tokens, 0)),
        "x-ratelimit-reset-tokens": reset,
    }


def anthropic_headers(
    window: RateWindow, request_limit: int, token_limit: int, tokens: int
) -> dict[str, str]:
    """`anthropic-ratelimit-*` headers after counting a request of `tokens` tokens."""
    window.consume(tokens, time.monotonic())
    reset = window.reset_at
    return {
        "anthropic-ratelimit-requests-limit": str(request_limit),
        "anthropic-ratelimit-requests-remaining": str(max(request_limit - window.requests, 0)),
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": str(token_limit),
        "anthropic-ratelimit-tokens-remaining": str(max(token_limit - window.tokens, 0)),
        "anthropic-ratelimit-tokens-reset": reset,
    }


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `350ms`, `12.5s`."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
