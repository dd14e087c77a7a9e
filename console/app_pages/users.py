"""Users and tenants, with this month's usage against their quotas. Admins only."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import streamlit as st

from console import actions, data
from console.auth import require_role
from shared import admin
from shared.body_storage import BODY_STORAGE_CHOICES

actor = require_role("admin")
month = data.this_month()
st.title("Users and tenants")
st.caption(f"Usage in {month} (UTC), cache hits excluded, against the quotas in force.")

spend = data.month_spend(month)
tenants = data.tenants()
users = data.users()
tiers = data.tiers().set_index("name")


def quota_table(users: pd.DataFrame) -> pd.DataFrame:
    """Each user's spend and its quotas in force (own override, else the tier's)."""
    table = users.join(spend["users"].rename(columns={"usd": "spent_usd"}), on="id")
    table[["tokens", "spent_usd"]] = table[["tokens", "spent_usd"]].fillna(0)
    for column in ("monthly_usd", "monthly_tokens"):
        from_tier = table["tier"].map(tiers[column])
        quota = table[column].astype(object).where(table[column].notna(), from_tier)
        table[f"{column}_quota"] = pd.to_numeric(quota, errors="coerce")
    table["usd_used"] = (table["spent_usd"] / table["monthly_usd_quota"]).clip(upper=1.0)
    table["tokens_used"] = (table["tokens"] / table["monthly_tokens_quota"]).clip(upper=1.0)
    return table


def share(label: str) -> Any:
    return st.column_config.ProgressColumn(label, min_value=0.0, max_value=1.0)


st.subheader("Tenants")
tenant_table = tenants.join(spend["tenants"].rename(columns={"usd": "spent_usd"}), on="id")
tenant_table[["tokens", "spent_usd"]] = tenant_table[["tokens", "spent_usd"]].fillna(0)
tenant_table["monthly_usd"] = tenant_table["monthly_usd"].astype(float)
tenant_table["used"] = (tenant_table["spent_usd"] / tenant_table["monthly_usd"]).clip(upper=1.0)
st.dataframe(
    tenant_table,
    hide_index=True,
    column_order=["name", "users", "tokens", "spent_usd", "monthly_usd", "used", "body_storage"],
    column_config={
        "body_storage": st.column_config.TextColumn("bodies kept"),
        "spent_usd": st.column_config.NumberColumn("spent", format="$%.4f"),
        "monthly_usd": st.column_config.NumberColumn("cap", format="$%.2f"),
        "used": share("of cap"),
    },
)

st.subheader("Users")
st.dataframe(
    quota_table(users),
    hide_index=True,
    column_order=["email", "tenant", "tier", "tokens", "monthly_tokens_quota", "tokens_used"]
    + ["spent_usd", "monthly_usd_quota", "usd_used"],
    column_config={
        "monthly_tokens_quota": st.column_config.NumberColumn("token quota"),
        "tokens_used": share("of token quota"),
        "spent_usd": st.column_config.NumberColumn("spent", format="$%.4f"),
        "monthly_usd_quota": st.column_config.NumberColumn("USD quota", format="$%.2f"),
        "usd_used": share("of USD quota"),
    },
)

new_tenant, new_user, move_user, bodies = st.columns(4)
with new_tenant, st.form("new-tenant"):
    st.markdown("**New tenant**")
    tenant_name = st.text_input("Name", key="new-tenant-name")
    tenant_cap = st.number_input(
        "Monthly USD cap", min_value=0.0, value=None, format="%.2f", key="new-tenant-cap"
    )
    if st.form_submit_button("Create tenant", key="create-tenant"):
        cap = None if tenant_cap is None else Decimal(str(round(tenant_cap, 8)))
        if actions.attempt(
            f"Created tenant {tenant_name}.", admin.create_tenant, actor, tenant_name, cap
        ):
            st.rerun()

with new_user, st.form("new-user"):
    st.markdown("**New user**")
    email = st.text_input("Email", key="new-user-email")
    tenant = st.selectbox("Tenant", tenants["name"].tolist(), key="new-user-tenant")
    tier = st.selectbox("Tier", tiers.index.tolist(), key="new-user-tier")
    if st.form_submit_button("Create user", key="create-user"):
        if tenant is None or tier is None:
            st.error("Create a tenant and a tier first.")
        elif actions.attempt(
            f"Created user {email}.", admin.create_user, actor, email, tenant, tier
        ):
            st.rerun()

with move_user, st.form("user-tier"):
    st.markdown("**Change a user's tier**")
    who = st.selectbox("User", users["email"].tolist(), key="user-tier-email")
    to_tier = st.selectbox("New tier", tiers.index.tolist(), key="user-tier-tier")
    if st.form_submit_button("Change tier", key="change-tier"):
        if (
            who is not None
            and to_tier is not None
            and actions.attempt(
                f"Moved {who} to tier {to_tier}.", admin.set_user_tier, actor, who, to_tier
            )
        ):
            st.rerun()

with bodies, st.form("tenant-bodies"):
    st.markdown("**How a tenant's bodies are kept**")
    which = st.selectbox("Tenant", tenants["name"].tolist(), key="bodies-tenant")
    storage = st.selectbox(
        "Bodies",
        BODY_STORAGE_CHOICES,
        key="bodies-storage",
        help="full: as sent, secrets redacted; redacted: the shape without the text; "
        "none: no bodies (the record's metadata is still kept). Applies to calls from now on.",
    )
    if st.form_submit_button("Save", key="save-bodies"):
        if which is not None and actions.attempt(
            f"Bodies of {which} now kept: {storage}.",
            admin.set_tenant_body_storage,
            actor,
            which,
            storage,
        ):
            st.rerun()
