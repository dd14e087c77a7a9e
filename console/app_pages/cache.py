"""Cache: response-cache hit rate over time by model or tenant; tokens and dollars saved."""

from __future__ import annotations

from typing import Literal

import streamlit as st

from console import charts, dashboards
from console.auth import require_role
from console.dashboard_filters import dashboard_filters

require_role("viewer")
st.title("Cache")
filters = dashboard_filters("cache", dashboards.labels())
totals = dashboards.totals(filters)

columns = st.columns(5)
columns[0].metric(
    "Hit rate",
    f"{totals.hit_rate:.1%}",
    help="Calls answered from the gateway's response cache, over calls that got an answer "
    "(errors and refusals left out).",
)
columns[1].metric("Cache hits", f"{totals.cache_hits:,}")
columns[2].metric("Tokens served from the cache", f"{totals.cache_hit_tokens:,}")
columns[3].metric("USD saved by the response cache", f"${totals.response_cache_saved_usd:,.2f}")
columns[4].metric(
    "Prompt-cache tokens / USD saved",
    f"{totals.cache_read_tokens:,}",
    f"${totals.prompt_cache_saved_usd:,.2f} saved",
    delta_color="off",
    help="Input tokens the provider read from its own prompt cache, and the discount.",
)

GROUPINGS: list[Literal["model", "tenant"]] = ["model", "tenant"]
by = st.radio(
    "Hit rate by",
    GROUPINGS,
    key="cache-by",
    horizontal=True,
    help="The eight groups with the most calls; the rest is summed as “other”.",
)
rates = dashboards.cache_hit_rates(filters, by)
st.plotly_chart(
    charts.rate_lines(rates, title=f"Hit rate by {by}", y_title="hit rate", legend=by),
    key="cache-hit-rate",
)

savings = dashboards.savings_over_time(filters)
left, right = st.columns(2)
with left:
    st.plotly_chart(
        charts.stacked_bars(
            savings,
            value="saved_usd",
            title="USD saved",
            y_title="USD",
            legend="source",
            color="source",
            bucket=filters.granularity,
        ),
        key="cache-saved-usd",
    )
with right:
    st.plotly_chart(
        charts.stacked_bars(
            savings,
            value="tokens",
            title="Tokens saved",
            y_title="tokens",
            legend="source",
            color="source",
            bucket=filters.granularity,
        ),
        key="cache-saved-tokens",
    )
