"""Dashboard queries over the rollups, checked against the raw records, on both databases."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from shared import analytics, end_users
from shared.analytics import Filters, Labels, bucket_bounds, percentile
from shared.models import LATENCY_BUCKETS, LATENCY_EDGES_MS
from shared.records import CallRecord, write_records
from shared.rollup import as_utc, hour_of
from shared.rollup_query import reading, scope_for
from tests.shared.usage_records import call, fresh_owner, varied_records

START = datetime(2032, 5, 6, 7, tzinfo=UTC)
METRIC_FIELDS = {
    "total": "latency_ms",
    "upstream": "upstream_latency_ms",
    "overhead": "overhead_ms",
    "ttft": "ttft_ms",
}


@pytest.fixture(scope="module")
def written(engine: Engine) -> tuple[int, list[CallRecord]]:
    """An owner's varied records (its own tenant id), written twice as a replay would."""
    owner = fresh_owner()
    records = [r for r in varied_records(owner, START, 300, seed=21) if r.tenant_id == owner]
    write_records(engine, records)
    write_records(engine, records[:50])
    return owner, records


def mine(owner: int, **values: object) -> Filters:
    return Filters(START - timedelta(hours=1), START + timedelta(days=4), (owner,), **values)  # type: ignore[arg-type]


# -- percentiles ------------------------------------------------------------------------


def test_percentile_interpolates_within_the_bucket_holding_the_rank() -> None:
    counts = [0] * LATENCY_BUCKETS
    counts[5], counts[6] = 50, 50  # bucket 5: [E4, E5), bucket 6: [E5, E6)
    low, high = LATENCY_EDGES_MS[4], LATENCY_EDGES_MS[5]
    assert percentile(counts, 0.25) == pytest.approx(low + (high - low) * 0.5)
    assert percentile(counts, 0.5) == pytest.approx(high)
    assert LATENCY_EDGES_MS[5] < (percentile(counts, 0.99) or 0) <= LATENCY_EDGES_MS[6]
    assert percentile([0] * LATENCY_BUCKETS, 0.5) is None


def test_percentile_of_the_open_last_bucket_is_its_lower_edge() -> None:
    counts = [0] * LATENCY_BUCKETS
    counts[-1] = 3
    assert percentile(counts, 0.99) == LATENCY_EDGES_MS[-1]


def test_percentiles_from_the_rollup_are_within_bucket_precision_of_exact_ones(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    summary = analytics.latency_summary(engine, mine(owner))
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        for metric, name in METRIC_FIELDS.items():
            value = getattr(record, name)
            if value is not None:
                values[(record.model or "(none)", metric)].append(value)
    assert {(p.model, p.metric) for p in summary if p.count} == set(values)
    for point in summary:
        exact_values = sorted(values.get((point.model, point.metric), []))
        assert point.count == len(exact_values)
        for q, estimate in zip(
            analytics.PERCENTILES, (point.p50, point.p95, point.p99), strict=True
        ):
            if not exact_values:
                assert estimate is None
                continue
            exact = exact_values[math.ceil(q * len(exact_values)) - 1]
            low, high = bucket_bounds(exact)
            assert estimate is not None and low <= estimate <= high, (point, q, exact)


def test_latency_over_time_has_a_point_per_hour_model_and_metric(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    filters = Filters(START, START + timedelta(days=1), (owner,), models=("gpt-4o",))
    points = analytics.latency_over_time(engine, filters)
    totals = [p for p in points if p.metric == "total"]
    expected = Counter(
        hour_of(r.created_at)
        for r in records
        if r.model == "gpt-4o" and START <= as_utc(r.created_at) < START + timedelta(days=1)
    )
    assert {p.period: p.count for p in totals} == dict(expected)
    assert all(p.model == "gpt-4o" for p in points)


# -- spend ------------------------------------------------------------------------------


def test_spend_over_time_keeps_the_top_groups_and_sums_the_rest_as_other(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    points = analytics.spend_over_time(engine, mine(owner), "key", Labels(), top=1)
    groups = {p.group for p in points}
    assert len(groups) == 2 and "other" in groups
    assert groups - {"other"} <= {f"#{owner + i}" for i in range(3)}
    assert sum(p.requests for p in points) == len(records)
    assert sum(p.cost_usd for p in points) == pytest.approx(float(sum(r.cost_usd for r in records)))
    upstream_tokens = sum(r.prompt_tokens + r.completion_tokens for r in records if not r.is_cached)
    assert sum(p.tokens for p in points) == upstream_tokens
    by_day = {p.period for p in points}
    assert all(period.minute == 0 and period.hour == 0 for period in by_day)  # 4 days: per day


def test_spend_by_end_user_names_missing_end_users_none(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    filters = Filters(START, START + timedelta(hours=6), (owner,))  # hours, but end users: days
    points = analytics.spend_over_time(engine, filters, "end_user", Labels(), top=20)
    assert all(p.period == START.replace(hour=0) for p in points)
    assert f"(none) · #{owner}" in {p.group for p in points}
    day_records = [r for r in records if as_utc(r.created_at).date() == START.date()]
    assert sum(p.requests for p in points) == len(day_records)


def test_top_spenders_rank_by_cost_with_their_share(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    spent: dict[int, Decimal] = defaultdict(Decimal)
    for record in records:
        spent[record.user_id or 0] += record.cost_usd
    labels = Labels(users={owner: "a@example.com", owner + 1: "b@example.com"})
    top = analytics.top_spenders(engine, mine(owner), "user", labels)
    ranked = sorted(spent.items(), key=lambda item: -item[1])
    assert [s.name for s in top] == [labels.users[user] for user, _ in ranked]
    assert [s.cost_usd for s in top] == pytest.approx([float(usd) for _, usd in ranked])
    assert sum(s.share for s in top) == pytest.approx(1.0)
    end_users = analytics.top_spenders(engine, mine(owner), "end_user", Labels(), limit=3)
    assert len(end_users) == 3 and all(s.name.endswith(f" · #{owner}") for s in end_users)


def test_totals_split_response_cache_and_prompt_cache_savings(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    totals = analytics.totals(engine, mine(owner))
    hits = [r for r in records if r.is_cached]
    assert totals.requests == len(records)
    assert totals.cache_hits == len(hits)
    assert totals.cache_hit_tokens == sum(r.prompt_tokens + r.completion_tokens for r in hits)
    assert totals.response_cache_saved_usd == pytest.approx(
        float(sum(r.cache_saved_usd for r in hits))
    )
    assert totals.prompt_cache_saved_usd == pytest.approx(
        float(sum(r.cache_saved_usd for r in records if not r.is_cached))
    )
    savings = analytics.savings_over_time(engine, mine(owner))
    assert sum(s.saved_usd for s in savings if s.source == "response cache") == pytest.approx(
        totals.response_cache_saved_usd
    )
    assert sum(s.tokens for s in savings if s.source == "prompt cache") == sum(
        r.cache_read_tokens for r in records if not r.is_cached
    )


# -- errors, refusals, cache ------------------------------------------------------------


def test_error_rates_and_refusals_count_each_type(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    errors = analytics.error_rates(engine, mine(owner))
    by_type = Counter[str]()
    for point in errors:
        by_type[point.group] += point.count
        assert point.rate == pytest.approx(point.count / point.requests)
    expected = Counter(r.error_code or f"http_{r.status}" for r in records if r.status >= 400)
    assert by_type == expected and "http_504" in by_type
    refused = Counter[str]()
    for point in analytics.refusals(engine, mine(owner)):
        refused[point.group] += point.count
    assert refused == Counter(r.refusal_reason for r in records if r.refusal_reason)
    assert set(refused) == {"rate_limit", "quota", "screening"}


def test_cache_hit_rate_counts_hits_over_answered_calls(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    points = analytics.cache_hit_rates(engine, mine(owner), "model", Labels())
    answered = [r for r in records if r.status < 400]
    assert sum(p.requests for p in points) == len(answered)
    assert sum(p.count for p in points) == sum(r.is_cached for r in answered)
    assert {p.group for p in points} == {r.model for r in answered}
    one_tenant = analytics.cache_hit_rates(engine, mine(owner), "tenant", Labels())
    assert {p.group for p in one_tenant} == {f"#{owner}"}


def test_an_empty_range_gives_empty_series(engine: Engine) -> None:
    filters = Filters(datetime(1990, 1, 1, tzinfo=UTC), datetime(1990, 1, 2, tzinfo=UTC))
    assert analytics.spend_over_time(engine, filters, "model", Labels()) == []
    assert analytics.latency_summary(engine, filters) == []
    assert analytics.totals(engine, filters).requests == 0
    assert analytics.top_spenders(engine, filters, "tenant", Labels()) == []


def test_a_record_written_later_for_an_old_hour_lands_in_that_hour(engine: Engine) -> None:
    owner = fresh_owner()
    old = START - timedelta(days=30)
    write_records(engine, [call(old, tenant_id=owner, cost_usd=Decimal("0.5"))])
    filters = Filters(old, old + timedelta(hours=1), (owner,))
    assert [
        (p.period, p.cost_usd)
        for p in analytics.spend_over_time(engine, filters, "tenant", Labels())
    ] == [(old, 0.5)]


@pytest.mark.parametrize(
    ("days", "needs", "owners", "table"),
    [
        (1, ("model", "cost_usd"), {}, "usage_hourly"),
        (7, ("model", "cost_usd"), {"tenant_ids": (1,)}, "usage_daily"),
        (7, ("user_id", "cost_usd"), {}, "usage_key_daily"),
        (7, ("cost_usd",), {"key_ids": (1,)}, "usage_key_daily"),
        (7, ("user_id", "cost_usd"), {"models": ("gpt-4o",)}, "usage_hourly"),
        (7, ("model", *analytics.HISTOGRAM_COLUMNS), {"user_ids": (1,)}, "usage_hourly"),
        (1, ("end_user", "cost_usd"), {}, "usage_end_user_daily"),
    ],
)
def test_the_smallest_rollup_with_the_needed_columns_answers(
    days: int, needs: tuple[str, ...], owners: dict[str, tuple[int, ...]], table: str
) -> None:
    filters = Filters(START, START + timedelta(days=days), **owners)  # type: ignore[arg-type]
    scope = scope_for(filters, needs)
    assert scope.table.name == table
    assert scope.granularity == ("hour" if days == 1 and table == "usage_hourly" else "day")


def test_latencies_of_one_key_over_days_come_from_the_hourly_rollup(
    engine: Engine, written: tuple[int, list[CallRecord]]
) -> None:
    owner, records = written
    summary = analytics.latency_summary(engine, mine(owner, key_ids=(owner + 1,)))
    totals = {p.model: p.count for p in summary if p.metric == "total"}
    expected = Counter(r.model for r in records if r.key_id == owner + 1)
    assert totals == dict(expected)


# -- end users --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def end_user_spend(engine: Engine) -> tuple[int, list[CallRecord]]:
    """30 end users of one tenant over 10 days, and two big spenders of the same month
    outside that range (large upper bounds, nothing in the range)."""
    owner = fresh_owner()
    start = datetime(2034, 7, 10, tzinfo=UTC)
    ids: dict[str, object] = {"tenant_id": owner, "user_id": owner, "key_id": owner}
    records = [
        call(
            start + timedelta(days=i % 10, hours=i % 24),
            end_user=f"eu-{i % 30:02d}" if i % 7 else None,
            cost_usd=Decimal(1 + (i * 37) % 11) / 100,
            prompt_tokens=10,
            **ids,
        )
        for i in range(300)
    ]
    records += [
        call(datetime(2034, 7, 2, tzinfo=UTC), end_user=name, cost_usd=Decimal(50), **ids)
        for name in ("whale-a", "whale-b")
    ]
    write_records(engine, records)
    return owner, records


@pytest.mark.parametrize("per_round", [2, 5, 200])
def test_top_end_users_equal_summing_every_end_user(
    engine: Engine,
    end_user_spend: tuple[int, list[CallRecord]],
    per_round: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner, records = end_user_spend
    monkeypatch.setattr(end_users, "CANDIDATES_PER_ROUND", per_round)
    filters = Filters(
        datetime(2034, 7, 10, tzinfo=UTC), datetime(2034, 7, 20, tzinfo=UTC), (owner,)
    )
    spent: dict[str, Decimal] = defaultdict(Decimal)
    for record in records:
        if (
            datetime(2034, 7, 10, tzinfo=UTC)
            <= record.created_at
            < datetime(2034, 7, 20, tzinfo=UTC)
        ):
            spent[record.end_user or ""] += record.cost_usd
    expected = sorted(spent.items(), key=lambda item: (-item[1], item[0]))[:5]
    with reading(engine) as connection:
        top = end_users.top_end_users(connection, filters, 5)
        everyone = end_users._everyone(connection, filters, 5)
    assert [(s.end_user, s.cost_usd) for s in top] == expected
    assert top == everyone


def test_spend_by_end_user_per_day_adds_up_to_the_day_totals(
    engine: Engine, end_user_spend: tuple[int, list[CallRecord]]
) -> None:
    owner, records = end_user_spend
    filters = Filters(datetime(2034, 7, 1, tzinfo=UTC), datetime(2034, 7, 20, tzinfo=UTC), (owner,))
    points = analytics.spend_over_time(
        engine, filters, "end_user", Labels(tenants={owner: "t"}), top=3
    )
    assert {p.group for p in points} == {"whale-a · t", "whale-b · t", "(none) · t", "other"}
    per_day: dict[datetime, float] = defaultdict(float)
    for record in records:
        per_day[as_utc(record.created_at).replace(hour=0)] += float(record.cost_usd)
    totals: dict[datetime, float] = defaultdict(float)
    for point in points:
        totals[point.period] += point.cost_usd
    assert totals == pytest.approx(dict(per_day))
