"""The dashboards' pure parts: figures from frames, and the time ranges of the filter row."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from console import charts
from console.dashboard_filters import time_range

T0 = datetime(2031, 5, 6, tzinfo=UTC)


def test_an_empty_frame_gives_a_titled_figure_that_says_so() -> None:
    figure = charts.stacked_bars(
        pd.DataFrame(columns=["period", "group", "cost_usd"]),
        value="cost_usd",
        title="Spend",
        y_title="USD",
    )
    assert figure.layout.title.text == "Spend"
    assert figure.layout.annotations[0].text == "No calls in this range"


def test_stacked_bars_put_the_largest_group_first() -> None:
    frame = pd.DataFrame(
        {
            "period": [T0, T0, T0 + timedelta(hours=1)],
            "group": ["small", "big", "big"],
            "cost_usd": [1.0, 5.0, 5.0],
        }
    )
    figure = charts.stacked_bars(frame, value="cost_usd", title="Spend", y_title="USD")
    assert [trace.name for trace in figure.data] == ["big", "small"]
    assert figure.layout.barmode == "stack"


def test_percentile_lines_draw_the_chosen_percentiles_of_one_measure() -> None:
    frame = pd.DataFrame(
        {
            "period": [T0, T0],
            "model": ["m", "m"],
            "metric": ["total", "ttft"],
            "count": [3, 0],
            "p50": [10.0, None],
            "p95": [20.0, None],
            "p99": [30.0, None],
        }
    )
    figure = charts.percentile_lines(frame, "total", ["p50", "p99"])
    assert figure.layout.title.text == "Total latency"
    assert sorted(trace.name for trace in figure.data) == ["m, p50", "m, p99"]
    assert charts.percentile_lines(frame, "ttft", ["p50"]).layout.annotations  # no calls


def test_latency_table_has_a_row_per_model_and_columns_per_measure() -> None:
    frame = pd.DataFrame(
        {
            "period": [None, None],
            "model": ["m", "m"],
            "metric": ["total", "overhead"],
            "count": [3, 3],
            "p50": [10.04, 1.0],
            "p95": [20.0, 2.0],
            "p99": [30.0, 3.0],
        }
    )
    table = charts.latency_table(frame)
    assert list(table.index) == ["m"]
    assert list(table.columns[:3]) == ["total p50 (ms)", "total p95 (ms)", "total p99 (ms)"]
    assert table.loc["m", "total p50 (ms)"] == 10.0


@pytest.mark.parametrize(
    ("choice", "custom", "start", "end"),
    [
        (
            "Last 24 hours",
            None,
            datetime(2031, 5, 5, 15, tzinfo=UTC),
            datetime(2031, 5, 6, 15, tzinfo=UTC),
        ),
        (
            "Last 7 days",
            None,
            datetime(2031, 4, 29, 15, tzinfo=UTC),
            datetime(2031, 5, 6, 15, tzinfo=UTC),
        ),
        (
            "This month",
            None,
            datetime(2031, 5, 1, tzinfo=UTC),
            datetime(2031, 5, 6, 15, tzinfo=UTC),
        ),
        (
            "Custom",
            (date(2031, 4, 1), date(2031, 4, 30)),
            datetime(2031, 4, 1, tzinfo=UTC),
            datetime(2031, 5, 1, tzinfo=UTC),
        ),
    ],
)
def test_time_ranges_end_with_the_current_hour(
    choice: str, custom: tuple[date, date] | None, start: datetime, end: datetime
) -> None:
    now = datetime(2031, 5, 6, 14, 25, tzinfo=UTC)
    assert time_range(choice, now, custom) == (start, end)
