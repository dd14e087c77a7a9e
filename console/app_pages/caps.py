"""Monthly USD caps: per tenant and for the whole deployment. Admins only."""

from __future__ import annotations

from decimal import Decimal

import streamlit as st

from console import actions, data
from console.auth import require_role
from console.limits_form import optional_number, present
from shared import admin

actor = require_role("admin")
month = data.this_month()
st.title("Caps")
st.caption(
    f"Monthly USD caps for {month} (UTC). A call is refused once a cap it falls under is "
    "spent; cache hits are free. Empty: no cap."
)
spend = data.month_spend(month)
tenants = data.tenants()


def usd(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(round(value, 8)))


def progress(spent: float, cap: float | None) -> None:
    if cap is None:
        st.caption(f"${spent:,.2f} spent; no cap.")
    elif cap <= 0:
        st.progress(1.0, text=f"${spent:,.2f} of $0.00: every paid call is refused")
    else:
        st.progress(min(spent / cap, 1.0), text=f"${spent:,.2f} of ${cap:,.2f}")


st.subheader("Global cap")
cap = data.global_cap()
progress(float(spend["total"]["usd"].iloc[0]), cap)
with st.form("global-cap"):
    global_cap = optional_number(
        "Monthly USD for the whole deployment",
        current=cap,
        min_value=0.0,
        step=10.0,
        format="%.2f",
        key="global-cap-usd",
        help="The last line of defence: every call of every tenant counts.",
    )
    if st.form_submit_button("Save global cap", key="save-global-cap", type="primary"):
        if actions.attempt("Saved the global cap.", admin.set_global_cap, actor, usd(global_cap)):
            st.rerun()

st.subheader("Tenant caps")
if tenants.empty:
    st.info("No tenants yet.")
else:
    table = tenants.join(spend["tenants"]["usd"].rename("spent_usd"), on="id")
    table["spent_usd"] = table["spent_usd"].fillna(0.0)
    table["monthly_usd"] = table["monthly_usd"].astype(float)
    table["used"] = (table["spent_usd"] / table["monthly_usd"]).clip(upper=1.0)
    st.dataframe(
        table,
        hide_index=True,
        column_order=["name", "users", "monthly_usd", "spent_usd", "used"],
        column_config={
            "monthly_usd": st.column_config.NumberColumn("cap", format="$%.2f"),
            "spent_usd": st.column_config.NumberColumn("spent", format="$%.2f"),
            "used": st.column_config.ProgressColumn("of cap", min_value=0.0, max_value=1.0),
        },
    )
    name = st.selectbox("Tenant", tenants["name"].tolist(), key="cap-tenant")
    current = present(tenants.set_index("name").loc[name, "monthly_usd"])
    with st.form(f"tenant-cap-{name}"):
        tenant_cap = optional_number(
            f"Monthly USD for {name}",
            current=None if current is None else float(current),
            min_value=0.0,
            step=10.0,
            format="%.2f",
            key=f"tenant-cap-{name}-usd",
        )
        if st.form_submit_button("Save tenant cap", key="save-tenant-cap", type="primary"):
            if actions.attempt(
                f"Saved the cap of {name}.", admin.set_tenant_cap, actor, name, usd(tenant_cap)
            ):
                st.rerun()
