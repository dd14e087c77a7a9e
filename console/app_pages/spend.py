"""Spend: cost and tokens over time, top spenders, cache savings, quotas and a forecast."""

from __future__ import annotations

import streamlit as st

from console import charts, dashboards
from console.auth import require_role
from console.dashboard_filters import dashboard_filters
from shared.analytics import DIMENSIONS, Dimension

STACK_LABELS = {
    "model": "model",
    "provider": "provider",
    "tenant": "tenant",
    "user": "user",
    "key": "key",
    "end_user": "end user",
}

require_role("viewer")
st.title("Spend")
labels = dashboards.labels()
filters = dashboard_filters("spend", labels)
totals = dashboards.totals(filters)

columns = st.columns(5)
columns[0].metric("Spend", f"${totals.cost_usd:,.2f}")
columns[1].metric("Tokens (upstream)", f"{totals.tokens:,}")
columns[2].metric("Calls", f"{totals.requests:,}")
columns[3].metric(
    "Saved by the response cache",
    f"${totals.response_cache_saved_usd:,.2f}",
    help="The original cost of every answer served from the gateway's cache.",
)
columns[4].metric(
    "Saved by prompt caching",
    f"${totals.prompt_cache_saved_usd:,.2f}",
    help="What the provider's prompt cache took off the input price.",
)

st.subheader("Over time")
left, right = st.columns([1, 3])
with left:
    measure = st.radio("Show", ["Spend (USD)", "Tokens"], key="spend-measure", horizontal=True)
    by = st.selectbox(
        "Stack by",
        DIMENSIONS,
        format_func=lambda d: STACK_LABELS[d],
        key="spend-stack",
        help="The eight largest by spend; the rest is summed as “other”. End users: per day.",
    )
series = dashboards.spend_over_time(filters, by)
value = "cost_usd" if measure == "Spend (USD)" else "tokens"
with right:
    st.plotly_chart(
        charts.stacked_bars(
            series,
            value=value,
            title=f"{measure} by {STACK_LABELS[by]}",
            y_title="USD" if value == "cost_usd" else "tokens",
            legend=STACK_LABELS[by],
            bucket="day" if by == "end_user" else filters.granularity,
        ),
        key="spend-over-time",
    )

st.subheader("Top spenders")
TOP: dict[Dimension, str] = {
    "tenant": "Tenants",
    "user": "Users",
    "end_user": "End users",
    "key": "Keys",
}
ranked = st.segmented_control(
    "Rank", list(TOP), format_func=lambda d: TOP[d], default="tenant", key="spend-top"
)
dimension: Dimension = ranked or "tenant"
top = dashboards.top_spenders(filters, dimension, 10)
chart_column, table_column = st.columns(2)
with chart_column:
    st.plotly_chart(
        charts.ranking(top, label="name", value="cost_usd", title=TOP[dimension], x_title="USD"),
        key="spend-top-chart",
    )
with table_column:
    st.dataframe(
        top[["name", "cost_usd", "tokens", "requests", "share"]],
        hide_index=True,
        column_config={
            "cost_usd": st.column_config.NumberColumn("USD", format="$%.4f"),
            "share": st.column_config.ProgressColumn("share", min_value=0.0, max_value=1.0),
        },
        key="spend-top-table",
    )

st.subheader("Savings")
savings = dashboards.savings_over_time(filters)
st.plotly_chart(
    charts.stacked_bars(
        savings,
        value="saved_usd",
        title="USD saved by caching",
        y_title="USD",
        legend="source",
        color="source",
        bucket=filters.granularity,
    ),
    key="spend-savings",
)

st.subheader("This month")
forecast = dashboards.month_forecast(filters)
month_columns = st.columns(4)
month_columns[0].metric(f"Spent in {forecast.month}", f"${forecast.spent_usd:,.2f}")
month_columns[1].metric("Daily rate (last 7 days)", f"${forecast.daily_rate_usd:,.2f}")
month_columns[2].metric("Month-end forecast", f"${forecast.forecast_usd:,.2f}")
if forecast.cap_usd is not None:
    month_columns[3].metric(f"Cap ({forecast.cap_scope})", f"${forecast.cap_usd:,.2f}")
    if forecast.forecast_usd > forecast.cap_usd:
        st.warning(
            f"At this rate the {forecast.cap_scope} cap of ${forecast.cap_usd:,.2f} is reached "
            "before the month ends; calls under it will then be refused."
        )
st.caption("The month and the forecast use the owner and model filters, not the time range.")

st.markdown("**Quotas and caps** (month to date, fullest first)")
quotas = dashboards.quota_use(filters)
if quotas.empty:
    st.info("No monthly USD or token limits apply to this selection.")
for row in quotas.head(20).itertuples():
    spent = (
        f"${row.spent:,.2f} of ${row.limit:,.2f}"
        if row.unit == "USD"
        else (f"{row.spent:,.0f} of {row.limit:,.0f} tokens")
    )
    st.progress(min(float(row.fraction), 1.0), text=f"{row.scope} {row.name}: {spent}")
if len(quotas) > 20:
    st.caption(f"…and {len(quotas) - 20} more; filter by tenant to see them.")
