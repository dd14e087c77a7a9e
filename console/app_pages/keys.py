"""Gateway keys: list with last use, create (the secret is shown once), revoke. Admins only."""

from __future__ import annotations

import streamlit as st

from console import actions, data
from console.auth import require_role
from shared import admin
from shared.keys import ENVIRONMENTS

NEW_SECRET_KEY = "metergate_new_key_secret"

actor = require_role("admin")
st.title("Keys")

# The secret lives in this session for exactly one run after the key is made: shown
# here, then gone (only its hash is stored; nobody can show it again).
new_secret = st.session_state.pop(NEW_SECRET_KEY, None)
if new_secret is not None:
    prefix, secret = new_secret
    st.warning(
        f"The secret of key {prefix}… is shown this once. Copy it now: "
        "it is not stored anywhere and cannot be shown again.",
        icon=":material/key:",
    )
    st.code(secret, language=None)

keys = data.keys()
users = data.users()
state = st.segmented_control(
    "Show", ["active", "expired", "revoked", "all"], default="active", key="keys-state"
)
shown = keys if state in (None, "all") else keys[keys["state"] == state]
st.dataframe(
    shown,
    hide_index=True,
    column_order=["id", "prefix", "name", "user", "tenant", "environment", "state"]
    + ["last_used_at", "created_at", "expires_at", "revoked_at", "models"],
    column_config={
        "last_used_at": st.column_config.DatetimeColumn("last used"),
        "created_at": st.column_config.DatetimeColumn("created"),
        "expires_at": st.column_config.DatetimeColumn("expires"),
        "revoked_at": st.column_config.DatetimeColumn("revoked"),
    },
)

create, revoke = st.columns(2)
with create:
    st.subheader("New key")
    if users.empty:
        st.info("Add a user first (Users and tenants).")
    else:
        with st.form("new-key"):
            owner = st.selectbox("User", users["email"].tolist(), key="new-key-user")
            name = st.text_input("Label", key="new-key-name", placeholder="backend")
            environment = st.selectbox(
                "Environment", ENVIRONMENTS, index=ENVIRONMENTS.index("prod"), key="new-key-env"
            )
            models = st.multiselect(
                "Allowed models",
                data.model_names(),
                key="new-key-models",
                help="Empty: what the user's tier allows.",
            )
            days = st.number_input(
                "Expires in days",
                min_value=1,
                value=None,
                step=1,
                key="new-key-days",
                help="Empty: never.",
            )
            if st.form_submit_button("Create key", key="create-key", type="primary"):
                created = actions.attempt(
                    "Created a key.",
                    admin.create_key,
                    actor,
                    owner,
                    name=name,
                    environment=environment,
                    models=models or None,
                    expires_in_days=None if days is None else int(days),
                )
                if created is not None:
                    row, secret = created
                    st.session_state[NEW_SECRET_KEY] = (row.prefix, secret)
                    st.rerun()

with revoke:
    st.subheader("Revoke a key")
    active = keys[keys["state"] != "revoked"]
    if active.empty:
        st.info("No key to revoke.")
    else:
        labels = {
            int(row.id): f"{row.prefix} {row.name or ''} · {row.user}".replace("  ", " ")
            for row in active.itertuples()
        }
        with st.form("revoke-key"):
            key_id = st.selectbox(
                "Key", list(labels), format_func=labels.__getitem__, key="revoke-key-id"
            )
            sure = st.checkbox(
                "Every call with this key is refused from now on", key="revoke-key-sure"
            )
            if st.form_submit_button("Revoke key", key="revoke-key", type="primary"):
                if not sure:
                    st.error("Tick the box to confirm.")
                elif actions.attempt(
                    f"Revoked key {labels[key_id]}.", admin.revoke_key, actor, key_id
                ):
                    st.rerun()
