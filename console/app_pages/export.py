"""Export: usage and cost per tenant, user and key for a billing period, as CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from console import dashboards
from console.auth import require_role
from console.dashboard_filters import time_range
from shared.billing import BillingPeriod, month_period
from shared.usage import month_of, month_start

MONTHS_OFFERED = 13

require_role("viewer")
st.title("Export")
st.caption(
    "Usage and cost per tenant, user and key for a billing period (UTC), one row per key "
    "used. The same CSV comes from `shared.billing.billing_csv` for scripts."
)
labels = dashboards.labels()

this_month = month_of(datetime.now(UTC))
months = [this_month]
while len(months) < MONTHS_OFFERED:
    months.append(month_of(month_start(months[-1]) - timedelta(days=1)))

left, middle, right = st.columns([1, 1, 2])
with left:
    kind = st.radio("Period", ["Month", "Dates"], key="export-kind", horizontal=True)
with middle:
    if kind == "Month":
        month = st.selectbox("Month", months, key="export-month")
        period = month_period(month)
        name = month
    else:
        today = datetime.now(UTC).date()
        picked = st.date_input(
            "From – to (UTC, inclusive)", (today.replace(day=1), today), key="export-dates"
        )
        first, last = picked if isinstance(picked, tuple) and len(picked) == 2 else (today, today)
        period = BillingPeriod(*time_range("Custom", datetime.now(UTC), (first, last)))
        name = f"{first.isoformat()}_{last.isoformat()}"
with right:
    tenant_ids = st.multiselect(
        "Tenants",
        sorted(labels.tenants, key=lambda i: labels.tenants[i]),
        format_func=lambda i: labels.tenants.get(i, f"#{i}"),
        key="export-tenants",
        placeholder="All tenants",
    )

table = dashboards.billing_table(period, tuple(tenant_ids))
st.download_button(
    "Download CSV",
    dashboards.billing_csv(period, tuple(tenant_ids)),
    file_name=f"metergate-usage-{name}.csv",
    mime="text/csv",
    key="export-download",
    icon=":material/download:",
    type="primary",
    on_click="ignore",
)
columns = st.columns(3)
columns[0].metric("Keys", f"{len(table):,}")
columns[1].metric("Calls", f"{int(table['requests'].sum()):,}")
columns[2].metric("Cost", f"${float(table['cost_usd'].sum()):,.2f}")
if table.empty:
    st.info("No usage in this period.")
else:
    st.dataframe(
        table.drop(columns=["tenant_id", "user_id"]),
        hide_index=True,
        column_config={"cost_usd": st.column_config.NumberColumn("cost_usd", format="$%.4f")},
        key="export-preview",
    )
