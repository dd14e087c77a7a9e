"""Per-user and per-key overrides of the tier's limits. Admins only.

A user's override replaces its tier's value; a key's narrows one key within its
user's allowance, and a key's end-user tier limits each end user of the key.
"""

from __future__ import annotations

import streamlit as st

from console import actions, data
from console.auth import require_role
from console.limits_form import limit_inputs, present
from shared import admin

actor = require_role("admin")
st.title("Overrides")
st.caption("Empty inputs inherit: a user's from its tier, a key's from its user.")

users = data.users()
keys = data.keys()
tiers = data.tiers().set_index("name")
models = data.model_names()
by_user, by_key = st.tabs(["Users", "Keys"])

with by_user:
    if users.empty:
        st.info("No users yet.")
    else:
        email = st.selectbox("User", users["email"].tolist(), key="override-user")
        user = users.set_index("email").loc[email].to_dict()
        tier = tiers.loc[user["tier"]].to_dict()
        st.caption(f"Tenant **{user['tenant']}**, tier **{user['tier']}**.")
        with st.form(f"user-overrides-{email}"):
            limits = limit_inputs(
                f"user-{email}", user, models, empty_means="the tier's value", inherited=tier
            )
            if st.form_submit_button("Save user overrides", key="save-user", type="primary"):
                if actions.attempt(
                    f"Saved the overrides of {email}.",
                    admin.set_user_overrides,
                    actor,
                    email,
                    limits,
                ):
                    st.rerun()

with by_key:
    active = keys[keys["state"] != "revoked"]
    if active.empty:
        st.info("No active keys.")
    else:
        labels = {
            int(row.id): f"{row.prefix} {row.name or ''} · {row.user}".replace("  ", " ")
            for row in active.itertuples()
        }
        key_id = st.selectbox(
            "Key", list(labels), format_func=labels.__getitem__, key="override-key"
        )
        key = active.set_index("id").loc[key_id].to_dict()
        owner = users.set_index("email").loc[key["user"]].to_dict()
        inherited = {
            name: present(owner.get(name))
            if present(owner.get(name)) is not None
            else tiers.loc[owner["tier"]].get(name)
            for name in (*data.LIMIT_COLUMNS, "models")
        }
        tier_names = tiers.index.tolist()
        current_end_user_tier = present(key.get("end_user_tier"))
        with st.form(f"key-overrides-{key_id}"):
            limits = limit_inputs(
                f"key-{key_id}", key, models, empty_means="the user's value", inherited=inherited
            )
            end_user_tier = st.selectbox(
                "End-user tier",
                [None, *tier_names],
                index=0
                if current_end_user_tier is None
                else tier_names.index(current_end_user_tier) + 1,
                format_func=lambda name: "none" if name is None else name,
                key=f"key-{key_id}-end_user_tier",
                help="Limits (rpm, tpm, monthly USD) applied to each end user of this key.",
            )
            if st.form_submit_button("Save key overrides", key="save-key", type="primary"):
                if actions.attempt(
                    f"Saved the overrides of key {key['prefix']}.",
                    admin.set_key_overrides,
                    actor,
                    key_id,
                    limits,
                    end_user_tier,
                ):
                    st.rerun()
