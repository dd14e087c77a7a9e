"""Latency: p50 / p95 / p99 by model over time, error rate by type, refusals by reason."""

from __future__ import annotations

import streamlit as st

from console import charts, dashboards
from console.auth import require_role
from console.dashboard_filters import dashboard_filters

require_role("viewer")
st.title("Latency")
st.caption(
    "Percentiles are read from latency histograms whose buckets grow by a factor of √2, "
    "so each is accurate to within its bucket."
)
filters = dashboard_filters("latency", dashboards.labels(), default_range="Last 24 hours")

left, right = st.columns([1, 3])
with left:
    metric = st.radio(
        "Measure",
        list(charts.METRIC_TITLES),
        format_func=lambda m: charts.METRIC_TITLES[m],
        key="latency-metric",
    )
    percentiles = st.multiselect(
        "Percentiles", ["p50", "p95", "p99"], default=["p50", "p95", "p99"], key="latency-pcts"
    )
with right:
    over_time = dashboards.latency_over_time(filters)
    st.plotly_chart(
        charts.percentile_lines(over_time, metric, percentiles), key="latency-over-time"
    )

st.subheader("By model over the whole range")
table = charts.latency_table(dashboards.latency_summary(filters))
if table.empty:
    st.info("No calls in this range.")
else:
    st.dataframe(table, key="latency-summary")

errors_column, refusals_column = st.columns(2)
with errors_column:
    errors = dashboards.error_rates(filters)
    st.plotly_chart(
        charts.rate_lines(
            errors, title="Error rate by type", y_title="share of calls", legend="error"
        ),
        key="latency-errors",
    )
with refusals_column:
    refused = dashboards.refusals(filters)
    st.plotly_chart(
        charts.stacked_bars(
            refused,
            value="count",
            title="Refusals by reason",
            y_title="calls",
            legend="reason",
            bucket=filters.granularity,
        ),
        key="latency-refusals",
    )
