"""Plotly figures for the dashboards: pure functions from pandas frames to figures.

No Streamlit and no database here; each builder takes the frame a loader in
``console.dashboards`` returns and gives back a figure (a titled, empty one when
the frame has no rows).
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

HEIGHT = 360
PERCENTILE_COLUMNS = {"p50": "p50", "p95": "p95", "p99": "p99"}
METRIC_TITLES = {
    "total": "Total latency",
    "upstream": "Upstream latency",
    "overhead": "Gateway overhead",
    "ttft": "Time to first token",
}


def _empty(title: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        height=HEIGHT,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[{"text": "No calls in this range", "showarrow": False, "font_size": 16}],
    )
    return figure


def _finish(figure: go.Figure, y_title: str, *, legend: str = "") -> go.Figure:
    figure.update_layout(
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend_title_text=legend,
        xaxis_title=None,
        yaxis_title=y_title,
        hovermode="x unified",
    )
    return figure


def stacked_bars(
    frame: pd.DataFrame,
    *,
    value: str,
    title: str,
    y_title: str,
    legend: str = "",
    color: str = "group",
    bucket: str = "hour",
) -> go.Figure:
    """Bars per ``period``, stacked by ``color`` (the largest group at the bottom), each
    one ``bucket`` ("hour" or "day") wide, so a lone bar is not drawn as a sliver."""
    if frame.empty:
        return _empty(title)
    order = frame.groupby(color)[value].sum().sort_values(ascending=False).index.tolist()
    figure = px.bar(
        frame,
        x="period",
        y=value,
        color=color,
        title=title,
        category_orders={color: order},
        labels={color: legend or color, value: y_title, "period": "time (UTC)"},
    )
    width = pd.Timedelta(hours=24 if bucket == "day" else 1)
    periods = pd.to_datetime(frame["period"])
    figure.update_traces(width=width.total_seconds() * 1000 * 0.9)
    figure.update_layout(barmode="stack")
    figure.update_xaxes(range=[periods.min() - width, periods.max() + width])
    return _finish(figure, y_title, legend=legend)


def ranking(frame: pd.DataFrame, *, label: str, value: str, title: str, x_title: str) -> go.Figure:
    """Horizontal bars, largest on top."""
    if frame.empty:
        return _empty(title)
    ordered = frame.sort_values(value)
    figure = px.bar(ordered, x=value, y=label, orientation="h", title=title)
    figure.update_layout(
        height=max(HEIGHT // 2, 28 * len(ordered) + 80),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        xaxis_title=x_title,
        yaxis_title=None,
    )
    return figure


def percentile_lines(frame: pd.DataFrame, metric: str, percentiles: list[str]) -> go.Figure:
    """One line per model and percentile (dashed by percentile) of one latency metric, ms."""
    title = METRIC_TITLES.get(metric, metric)
    rows = frame[(frame["metric"] == metric) & (frame["count"] > 0)] if not frame.empty else frame
    if rows.empty or not percentiles:
        return _empty(title)
    long = rows.melt(
        id_vars=["period", "model"],
        value_vars=percentiles,
        var_name="percentile",
        value_name="ms",
    ).dropna(subset=["ms"])
    figure = px.line(
        long.sort_values("period"),
        x="period",
        y="ms",
        color="model",
        line_dash="percentile",
        markers=True,
        title=title,
        labels={"period": "time (UTC)"},
    )
    figure.update_yaxes(type="log")
    return _finish(figure, "ms (log scale)", legend="model, percentile")


def rate_lines(frame: pd.DataFrame, *, title: str, y_title: str, legend: str = "") -> go.Figure:
    """One line per ``group`` of its ``rate`` (0..1, shown as percent) over ``period``."""
    if frame.empty:
        return _empty(title)
    figure = px.line(
        frame.sort_values("period"),
        x="period",
        y="rate",
        color="group",
        markers=True,
        title=title,
        labels={"period": "time (UTC)", "group": legend or "group"},
    )
    figure.update_yaxes(tickformat=".1%", rangemode="tozero")
    return _finish(figure, y_title, legend=legend)


def latency_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Models as rows; p50 / p95 / p99 of each latency measure as columns, in ms."""
    rows = summary[summary["count"] > 0] if not summary.empty else summary
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(
        index="model", columns="metric", values=["p50", "p95", "p99"], aggfunc="first"
    )
    table.columns = [f"{metric} {pct} (ms)" for pct, metric in table.columns]
    ordered = [
        f"{metric} {pct} (ms)"
        for metric in METRIC_TITLES
        for pct in ("p50", "p95", "p99")
        if f"{metric} {pct} (ms)" in table.columns
    ]
    return table[ordered].round(1)
