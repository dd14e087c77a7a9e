"""The audit log: who changed what, when, before -> after. Admins only."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import streamlit as st

from console import data
from console.auth import require_role
from shared.audit import AuditFilter

require_role("admin")
st.title("Audit")
st.caption(
    "Every change made in the console, through the admin API or with console-user commands, "
    "newest first."
)

who, what, kind, since = st.columns(4)
actor = who.selectbox("Who", [None, *data.audit_actors()], format_func=lambda a: a or "anyone")
action = what.text_input("Action starts with", key="audit-action", placeholder="tier.")
target_type = kind.selectbox(
    "Target",
    [None, *data.audit_target_types()],
    format_func=lambda t: t or "anything",
    key="audit-target",
)
day = since.date_input(
    "Since", value=datetime.now(UTC).date() - timedelta(days=30), key="audit-since"
)
where = AuditFilter(
    actor=actor,
    action_prefix=action.strip() or None,
    target_type=target_type,
    since=datetime.combine(day, time.min, tzinfo=UTC) if day else None,
)
log = data.audit_log(where)
if log.empty:
    st.info("No changes match.")
    st.stop()

picked = st.dataframe(
    log,
    hide_index=True,
    column_order=["at", "actor", "action", "target", "changed"],
    column_config={"at": st.column_config.DatetimeColumn("when", format="YYYY-MM-DD HH:mm:ss")},
    on_select="rerun",
    selection_mode="single-row",
    key="audit-table",
)
rows = picked.selection.rows if picked is not None else []
entry = log.iloc[rows[0] if rows else 0]
st.subheader(f"{entry['action']} · {entry['target']}")
st.caption(f"by {entry['actor']} at {entry['at']}")
sides = st.columns(2)
for side, label, value, absent in (
    (sides[0], "Before", entry["before"], "Nothing: this change created it."),
    (sides[1], "After", entry["after"], "Nothing: this change removed it."),
):
    side.markdown(f"**{label}**")
    if value is None:
        side.caption(absent)
    else:
        side.json(value, expanded=True)
