"""The retry policy, breakers, headroom tracker and fallback runner, on a fake clock.

Sleep, clock and jitter are injected, so every delay here is exact; the upstream is
a scripted ``send`` (end-to-end runs over HTTP are in test_resilience.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.breaker import BreakerBoard, BreakerState, Outcome
from proxy.errors import GatewayError
from proxy.headroom import HeadroomTracker, parse_duration_seconds, read_budgets
from proxy.providers.base import (
    UpstreamError,
    UpstreamHttpError,
    UpstreamNotConfigured,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.resilience import (
    Resilience,
    RetryPolicy,
    fallback_chain,
    is_retryable,
    outcome_of,
    retry_after_seconds,
)
from shared.catalogue import ModelEntry

EPOCH = 1_750_000_000.0


def http_error(status: int, **headers: str) -> UpstreamHttpError:
    return UpstreamHttpError(status, b"{}", {k.replace("_", "-"): v for k, v in headers.items()})


def entry(name: str, provider: str = "openai", fallbacks: Iterable[str] = ()) -> ModelEntry:
    one = Decimal(1)
    return ModelEntry(name, provider, f"up-{name}", one, one, one, one, fallbacks=tuple(fallbacks))


class FakeClock:
    """A monotonic clock that only moves when someone sleeps (or a call takes time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Answer:
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


Step = UpstreamError | Answer | float  # float: the call takes that long, then answers


@dataclass
class Script:
    """The upstream: per model, what each successive call does."""

    clock: FakeClock
    steps: dict[str, list[Step]]
    calls: list[tuple[str, float]] = field(default_factory=list)

    def send(self, model: ModelEntry, seconds_left: float) -> Answer:
        self.calls.append((model.name, seconds_left))
        step = self.steps[model.name].pop(0)
        if isinstance(step, float):
            if step > seconds_left:
                self.clock.now += seconds_left
                raise UpstreamTimeout("no first byte")
            self.clock.now += step
            return Answer()
        if isinstance(step, UpstreamError):
            raise step
        return step


def resilience(
    clock: FakeClock,
    *,
    policy: RetryPolicy | None = None,
    threshold: int = 5,
    cooldown: float = 30.0,
    headroom: HeadroomTracker | None = None,
    draw: float = 0.5,
) -> Resilience:
    return Resilience(
        policy or RetryPolicy(max_attempts=3, base_seconds=0.25, max_seconds=8.0),
        BreakerBoard(threshold, cooldown, clock=clock),
        headroom or HeadroomTracker(2, 2000, clock=clock, epoch_clock=lambda: EPOCH),
        sleep=clock.sleep,
        clock=clock,
        draw=lambda: draw,
        epoch_clock=lambda: EPOCH,
    )


# -- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "draw", "expected"),
    [
        (0, 0.0, 0.0),
        (0, 0.5, 0.125),
        (1, 0.5, 0.25),
        (2, 1.0, 1.0),
        (5, 1.0, 8.0),  # 0.25 * 32 = 8: at the cap
        (9, 1.0, 8.0),  # capped
        (200, 0.5, 4.0),  # no overflow for absurd retry counts
    ],
)
def test_backoff_is_full_jitter_below_a_doubling_capped_ceiling(
    retry: int, draw: float, expected: float
) -> None:
    assert RetryPolicy(base_seconds=0.25, max_seconds=8.0).backoff_seconds(retry, draw) == expected


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    policy = RetryPolicy(base_seconds=0.25, max_seconds=1.0)
    assert policy.delay_seconds(0, 0.5, retry_after=3.0) == 3.0
    assert policy.delay_seconds(3, 1.0, retry_after=0.05) == 1.0
    assert policy.delay_seconds(0, 0.5, retry_after=None) == 0.125


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "50"}, 0.05),
        ({"retry-after-ms": "50", "retry-after": "9"}, 0.05),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": format_datetime(datetime.fromtimestamp(EPOCH + 10, UTC), True)}, 10.0),
        ({"retry-after": format_datetime(datetime.fromtimestamp(EPOCH - 10, UTC), True)}, 0.0),
        ({"retry-after-ms": "soon", "retry-after": "1"}, 1.0),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_ms_seconds_and_dates(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_seconds(headers, EPOCH) == expected


@pytest.mark.parametrize(
    ("error", "is_expected_retryable", "outcome"),
    [
        (http_error(429), True, Outcome.NEUTRAL),
        (http_error(500), True, Outcome.FAILURE),
        (http_error(502), True, Outcome.FAILURE),
        (http_error(503), True, Outcome.FAILURE),
        (http_error(504), True, Outcome.FAILURE),
        (http_error(529), True, Outcome.FAILURE),
        (http_error(501), False, Outcome.FAILURE),
        (http_error(400), False, Outcome.SUCCESS),
        (http_error(401), False, Outcome.SUCCESS),
        (http_error(403), False, Outcome.SUCCESS),
        (http_error(404), False, Outcome.SUCCESS),
        (http_error(409), False, Outcome.SUCCESS),
        (http_error(422), False, Outcome.SUCCESS),
        (http_error(429, x_should_retry="false"), False, Outcome.NEUTRAL),
        (http_error(503, x_should_retry="false"), False, Outcome.FAILURE),
        (UpstreamTimeout("slow"), True, Outcome.FAILURE),
        (UpstreamUnreachable("reset"), True, Outcome.FAILURE),
        (UpstreamNotConfigured("no key"), False, Outcome.NEUTRAL),
    ],
)
def test_which_failures_are_retried_and_what_they_tell_the_breaker(
    error: UpstreamError, is_expected_retryable: bool, outcome: Outcome
) -> None:
    assert is_retryable(error) is is_expected_retryable
    assert outcome_of(error) is outcome


# -- the breaker -----------------------------------------------------------------------

KEY = ("openai", "up-m")


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    board = BreakerBoard(3, 30.0, clock=clock)
    for outcome in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE):
        board.record(KEY, outcome)
    board.record(KEY, Outcome.NEUTRAL)  # a 429 neither counts nor resets
    board.record(KEY, Outcome.FAILURE)
    assert board.state(KEY) is BreakerState.CLOSED
    board.record(KEY, Outcome.FAILURE)
    assert board.state(KEY) is BreakerState.OPEN
    assert board.state(("openai", "other")) is BreakerState.CLOSED


def test_open_breaker_refuses_with_the_cooldown_left_then_admits_one_probe() -> None:
    clock = FakeClock()
    board = BreakerBoard(1, 30.0, clock=clock)
    board.record(KEY, Outcome.FAILURE)
    clock.now += 10
    refused = board.admit(KEY)
    assert not refused.is_allowed and refused.retry_after_seconds == pytest.approx(20.0)
    board.record(KEY, Outcome.FAILURE)  # a late failure does not extend the cool-down
    clock.now += 20
    assert board.state(KEY) is BreakerState.HALF_OPEN
    probe = board.admit(KEY)
    assert probe.is_allowed and probe.is_probe
    assert not board.admit(KEY).is_allowed  # one probe at a time
    board.record(KEY, Outcome.SUCCESS, is_probe=True)
    assert board.state(KEY) is BreakerState.CLOSED
    assert board.admit(KEY) == board.admit(KEY) and board.admit(KEY).is_allowed


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    board = BreakerBoard(1, 30.0, clock=clock)
    board.record(KEY, Outcome.FAILURE)
    clock.now += 30
    assert board.admit(KEY).is_probe
    clock.now += 5
    board.record(KEY, Outcome.FAILURE, is_probe=True)
    assert board.state(KEY) is BreakerState.OPEN
    assert board.admit(KEY).retry_after_seconds == pytest.approx(30.0)


def test_neutral_or_lost_probe_lets_another_probe_go() -> None:
    clock = FakeClock()
    board = BreakerBoard(1, 30.0, probe_timeout_seconds=60.0, clock=clock)
    board.record(KEY, Outcome.FAILURE)
    clock.now += 30
    assert board.admit(KEY).is_probe
    board.record(KEY, Outcome.NEUTRAL, is_probe=True)  # a 429: no verdict
    assert board.admit(KEY).is_probe
    clock.now += 59
    assert not board.admit(KEY).is_allowed
    clock.now += 1  # the probe never reported back
    assert board.admit(KEY).is_probe


def test_breaker_counts_exactly_under_concurrent_failures() -> None:
    board = BreakerBoard(8000, 30.0)
    start = threading.Barrier(8)

    def fail_many() -> None:
        start.wait()
        for _ in range(1000 if threading.current_thread().name != "short" else 999):
            board.record(KEY, Outcome.FAILURE)

    threads = [
        threading.Thread(target=fail_many, name="short" if i == 0 else f"t{i}") for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert board.state(KEY) is BreakerState.CLOSED  # 7999 failures
    board.record(KEY, Outcome.FAILURE)
    assert board.state(KEY) is BreakerState.OPEN


def test_half_open_breaker_admits_one_probe_among_concurrent_callers() -> None:
    clock = FakeClock()
    board = BreakerBoard(1, 0.0, clock=clock)
    board.record(KEY, Outcome.FAILURE)
    start = threading.Barrier(16)
    admissions = []

    def admit() -> None:
        start.wait()
        admissions.append(board.admit(KEY))

    threads = [threading.Thread(target=admit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(a.is_probe for a in admissions) == 1
    assert sum(a.is_allowed for a in admissions) == 1


# -- headroom --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("350ms", 0.35),
        ("12.5s", 12.5),
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("1m30.5s", 90.5),
        ("", None),
        ("soon", None),
        ("5 s", None),
    ],
)
def test_openai_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration_seconds(text) == (pytest.approx(seconds) if seconds else None)


def test_budgets_read_from_both_providers_headers() -> None:
    openai_headers = {
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "20ms",
    }
    assert read_budgets(openai_headers, EPOCH) == {
        "requests": (4, 1.5),
        "tokens": (900, pytest.approx(0.02)),
    }
    reset = datetime.fromtimestamp(EPOCH, UTC) + timedelta(seconds=7)
    anthropic_headers = {
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "anthropic-ratelimit-input-tokens-remaining": "x",  # unreadable: left out
        "anthropic-ratelimit-input-tokens-reset": reset.isoformat(),
    }
    assert read_budgets(anthropic_headers, EPOCH) == {"requests": (1, 7.0)}


def test_calls_are_held_until_reset_only_when_headroom_is_nearly_gone() -> None:
    clock = FakeClock()
    tracker = HeadroomTracker(2, 1000, clock=clock, epoch_clock=lambda: EPOCH)
    tracker.observe(
        KEY, {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "5s"}
    )
    assert tracker.wait_seconds(KEY) == 0.0
    tracker.observe(KEY, {"x-ratelimit-remaining-tokens": "999", "x-ratelimit-reset-tokens": "3s"})
    assert tracker.wait_seconds(KEY) == 3.0
    tracker.observe(
        KEY, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "4s"}
    )
    assert tracker.wait_seconds(KEY) == 4.0
    assert tracker.wait_seconds(("openai", "another-model")) == 0.0
    clock.now += 4
    assert tracker.wait_seconds(KEY) == 0.0  # the windows have reset


def test_zero_thresholds_turn_holding_off() -> None:
    tracker = HeadroomTracker(0, 0)
    tracker.observe(
        KEY, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "9s"}
    )
    assert tracker.wait_seconds(KEY) == 0.0


# -- the runner ------------------------------------------------------------------------


def run(
    res: Resilience, script: Script, chain: list[ModelEntry]
) -> tuple[str, list[dict[str, Any]]]:
    attempts: list[dict[str, Any]] = []
    model, _ = res.call(chain, script.send, attempts)
    return model.name, attempts


def fails(
    res: Resilience, script: Script, chain: list[ModelEntry]
) -> tuple[GatewayError, list[dict[str, Any]]]:
    attempts: list[dict[str, Any]] = []
    with pytest.raises(GatewayError) as caught:
        res.call(chain, script.send, attempts)
    return caught.value, attempts


def test_retries_with_backoff_then_answers() -> None:
    clock = FakeClock()
    script = Script(clock, {"m": [http_error(500), UpstreamUnreachable("reset"), 0.2]})
    name, attempts = run(resilience(clock), script, [entry("m")])
    assert name == "m"
    assert clock.sleeps == [0.125, 0.25]  # draw 0.5 of 0.25, then of 0.5
    assert [a.get("status") or a.get("error") for a in attempts] == [500, "unreachable", 200]
    assert attempts[2]["latency_ms"] == pytest.approx(200.0)


def test_retry_after_is_honoured_as_a_floor() -> None:
    clock = FakeClock()
    script = Script(clock, {"m": [http_error(429, retry_after_ms="3000"), Answer()]})
    _, attempts = run(resilience(clock), script, [entry("m")])
    assert clock.sleeps == [3.0]
    assert attempts[0] == {"model": "m", "status": 429, "latency_ms": 0.0, "retry_after": 3.0}


def test_no_sleep_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5, deadline_seconds=5.0)
    script = Script(clock, {"m": [http_error(429, retry_after="10")] * 5})
    error, attempts = fails(resilience(clock, policy=policy), script, [entry("m")])
    assert clock.sleeps == []
    assert (error.status, error.code, error.headers) == (
        503,
        "upstream_rate_limited",
        {"Retry-After": "10"},
    )
    assert len(attempts) == 1


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.floats(0.0, 45.0),  # a call taking that long (a timeout past the deadline)
            st.floats(0.0, 20.0).map(lambda s: http_error(503, retry_after=f"{s:.3f}")),
            st.just(http_error(500)),
            st.just(UpstreamUnreachable("reset")),
        ),
        min_size=12,
        max_size=12,
    ),
    draw=st.floats(0.0, 0.999),
)
def test_the_whole_call_never_outlives_its_deadline(steps: list[Step], draw: float) -> None:
    clock = FakeClock()
    started = clock.now
    policy = RetryPolicy(max_attempts=4, base_seconds=1.0, max_seconds=8.0, deadline_seconds=30.0)
    chain = [entry("a", fallbacks=["b", "c"]), entry("b"), entry("c")]
    script = Script(clock, {"a": steps[:4], "b": steps[4:8], "c": steps[8:]})
    res = resilience(clock, policy=policy, threshold=100, draw=draw)
    try:
        res.call(chain, script.send, [])
    except GatewayError as error:
        assert error.status in (502, 503, 504)
    assert clock.now <= started + 30.0 + 1e-9
    assert all(seconds_left > 0 for _, seconds_left in script.calls)


def test_a_non_retryable_answer_ends_the_call_at_once() -> None:
    clock = FakeClock()
    script = Script(clock, {"a": [http_error(400)], "b": [Answer()]})
    error, attempts = fails(resilience(clock), script, [entry("a", fallbacks=["b"]), entry("b")])
    assert error.status == 400 and clock.sleeps == [] and len(attempts) == 1
    assert [name for name, _ in script.calls] == ["a"]


def test_missing_provider_key_is_not_retried() -> None:
    clock = FakeClock()
    script = Script(clock, {"a": [UpstreamNotConfigured("OPENAI_API_KEY is not set")]})
    error, attempts = fails(resilience(clock), script, [entry("a")])
    assert (error.status, error.code) == (502, "upstream_unreachable")
    assert attempts == [{"model": "a", "error": "not_configured", "latency_ms": 0.0}]


def test_fallbacks_answer_in_order_after_the_primary_retries_are_spent() -> None:
    clock = FakeClock()
    script = Script(
        clock,
        {"a": [http_error(503)] * 3, "b": [UpstreamTimeout("slow")] * 3, "c": [Answer()]},
    )
    chain = [entry("a", fallbacks=["b", "c"]), entry("b"), entry("c")]
    name, attempts = run(resilience(clock), script, chain)
    assert name == "c"
    assert [a["model"] for a in attempts] == ["a"] * 3 + ["b"] * 3 + ["c"]
    assert len(clock.sleeps) == 4  # between retries of one model only


def test_open_breaker_skips_to_the_fallback_without_calling() -> None:
    clock = FakeClock()
    res = resilience(clock, threshold=3)
    script = Script(clock, {"a": [http_error(500)] * 3, "b": [Answer(), Answer()]})
    chain = [entry("a", fallbacks=["b"]), entry("b")]
    assert run(res, script, chain)[0] == "b"  # the third failure opened a's breaker
    name, attempts = run(res, script, chain)
    assert name == "b"
    assert attempts[0] == {
        "model": "a",
        "error": "circuit_open",
        "latency_ms": 0.0,
        "retry_after": 30.0,
    }
    assert [n for n, _ in script.calls].count("a") == 3


def test_every_breaker_open_fails_fast_with_retry_after() -> None:
    clock = FakeClock()
    res = resilience(clock, threshold=2, cooldown=10.0)
    script = Script(clock, {"a": [http_error(500)] * 2})
    error, _ = fails(res, script, [entry("a")])
    assert error.status == 502
    clock.now += 2.5
    error, attempts = fails(res, script, [entry("a")])
    assert (error.status, error.code, error.headers) == (
        503,
        "upstream_unavailable",
        {"Retry-After": "8"},
    )
    assert len(script.calls) == 2 and attempts[0]["error"] == "circuit_open"


def test_half_open_probe_closes_the_breaker() -> None:
    clock = FakeClock()
    res = resilience(clock, threshold=1, cooldown=10.0)
    script = Script(clock, {"a": [UpstreamTimeout("slow"), Answer(), Answer()]})
    res.policy = RetryPolicy(max_attempts=1)
    fails(res, script, [entry("a")])
    assert res.breakers.state(("openai", "up-a")) is BreakerState.OPEN
    clock.now += 10
    assert run(res, script, [entry("a")])[0] == "a"
    assert res.breakers.state(("openai", "up-a")) is BreakerState.CLOSED


def test_calls_wait_for_the_window_reset_within_the_deadline() -> None:
    clock = FakeClock()
    res = resilience(clock)
    low = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "2s"}
    script = Script(clock, {"a": [Answer(low), Answer(), Answer(low), Answer()]})
    run(res, script, [entry("a")])
    _, attempts = run(res, script, [entry("a")])
    assert clock.sleeps == [2.0] and attempts[0]["held_ms"] == 2000.0
    res.headroom.observe(("openai", "up-a"), {**low, "x-ratelimit-reset-requests": "6m0s"})
    run(res, script, [entry("a")])  # the reset is past the deadline: no point holding
    assert clock.sleeps == [2.0]


def test_fallback_chain_keeps_usable_models_of_the_same_provider() -> None:
    catalogue = {
        m.name: m
        for m in (
            entry("a", fallbacks=["gone", "claude", "b", "secret", "a", "b", "c"]),
            entry("b", fallbacks=["d"]),
            entry("c"),
            entry("d"),
            entry("claude", provider="anthropic"),
            entry("secret"),
        )
    }
    chain = fallback_chain(catalogue["a"], catalogue.get, lambda name: name != "secret")
    assert [m.name for m in chain] == ["a", "b", "c"]
