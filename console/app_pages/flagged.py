"""Flagged: the queue of records marked for support, automatic and manual, with status,
assignee and notes. Support and admins."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import actions, data
from console.auth import require_role
from shared import flags
from shared.flags import FlagError, FlagQuery, FlagView

PAGE_SIZE = 50
ANYONE, UNASSIGNED, ME = "anyone", "unassigned", "me"
STATUS_CHOICES = {"open": "open", "resolved": "resolved", "all": ""}
SOURCE_CHOICES = {"any": "", "automatic": "auto", "manual": "manual"}
CONVERSATIONS_PAGE = "app_pages/conversations.py"
OFFSET_KEY = "flagged-offset"

actor = require_role("support")
st.title("Flagged")
counts = data.flag_counts()
left, right = st.columns(2)
left.metric("Open", counts.get("open", 0))
right.metric("Resolved", counts.get("resolved", 0))

people = data.support_people()
cols = st.columns(4)
status = cols[0].selectbox("Status", list(STATUS_CHOICES), key="flagged-status")
source = cols[1].selectbox("Source", list(SOURCE_CHOICES), key="flagged-source")
reason = cols[2].text_input("Reason contains", key="flagged-reason")
assignee = cols[3].selectbox("Assignee", [ANYONE, UNASSIGNED, ME, *people], key="flagged-assignee")
assigned = {ANYONE: "", UNASSIGNED: "-", ME: actor.name}.get(assignee, assignee)
offset: int = st.session_state.setdefault(OFFSET_KEY, 0)
query = FlagQuery(
    status=STATUS_CHOICES[status],
    source=SOURCE_CHOICES[source],
    reason=reason,
    assignee=assigned,
    limit=PAGE_SIZE + 1,
    offset=offset,
)
try:
    queue = data.flag_queue(query)
except FlagError as exc:
    st.error(str(exc))
    st.stop()
has_more = len(queue) > PAGE_SIZE
queue = queue[:PAGE_SIZE]


def frame(queue: list[FlagView]) -> pd.DataFrame:
    rows = []
    for flag in queue:
        record = flag.record
        rows.append(
            {
                "flag": flag.id,
                "status": flag.status,
                "reason": flag.reason,
                "source": flag.source,
                "assignee": flag.assignee,
                "note": flag.note,
                "flagged_at": flag.created_at,
                "model": record.model if record else None,
                "http": record.status if record else None,
                "tenant": record.tenant if record else None,
                "user": record.user if record else None,
                "preview": record.preview if record else "(record deleted)",
                "record": flag.record_id,
            }
        )
    columns = ["flag", "status", "reason", "source", "assignee", "note", "flagged_at", "model"]
    return pd.DataFrame(rows, columns=[*columns, "http", "tenant", "user", "preview", "record"])


if not queue:
    st.info("No flag matches.")
    st.stop()
st.dataframe(
    frame(queue),
    hide_index=True,
    column_config={
        "flagged_at": st.column_config.DatetimeColumn("flagged (UTC)", format="YYYY-MM-DD HH:mm"),
        "preview": st.column_config.TextColumn("last user message", width="large"),
    },
)
newer, older = st.columns(2)
if newer.button("← Previous", key="flagged-prev", disabled=offset == 0):
    st.session_state[OFFSET_KEY] = max(0, offset - PAGE_SIZE)
    st.rerun()
if older.button("Next →", key="flagged-next", disabled=not has_more):
    st.session_state[OFFSET_KEY] = offset + PAGE_SIZE
    st.rerun()

st.subheader("Work on a flag")
by_label = {f"#{f.id} · {f.status} · {f.reason} · {f.record_id[:8]}": f for f in queue}


def forget_flag_inputs() -> None:
    """Another flag was picked: its assignee and note start from what it has."""
    for key in ("flagged-assign-to", "flagged-note"):
        st.session_state.pop(key, None)


chosen = by_label[
    st.selectbox("Flag", list(by_label), key="flagged-pick", on_change=forget_flag_inputs)
]
st.page_link(
    CONVERSATIONS_PAGE, label="Open the conversation", query_params={"record": chosen.record_id}
)
left, right = st.columns(2)
with left.form(f"assign-{chosen.id}"):
    choices = ["nobody", *people]
    current = choices.index(chosen.assignee) if chosen.assignee in people else 0
    who = st.selectbox("Assign to", choices, index=current, key="flagged-assign-to")
    if st.form_submit_button("Assign", key="flagged-assign"):
        person = None if who == "nobody" else who
        if actions.attempt("Assigned.", flags.assign_flag, actor, chosen.id, person):
            st.rerun()
with right.form(f"note-{chosen.id}"):
    note = st.text_area("Note", value=chosen.note or "", key="flagged-note")
    save, resolve = st.columns(2)
    if save.form_submit_button("Save note", key="flagged-save-note"):
        if actions.attempt("Note saved.", flags.set_note, actor, chosen.id, note):
            st.rerun()
    if chosen.status == "open":
        if resolve.form_submit_button("Resolve", key="flagged-resolve", type="primary"):
            if actions.attempt("Resolved.", flags.resolve_flag, actor, chosen.id, note):
                st.rerun()
    elif resolve.form_submit_button("Reopen", key="flagged-reopen"):
        if actions.attempt("Reopened.", flags.reopen_flag, actor, chosen.id):
            st.rerun()
if st.button("Remove this flag", key="flagged-unflag", help="For a flag set by mistake."):
    if actions.attempt("Flag removed.", flags.unflag, actor, chosen.id) is not None:
        st.rerun()
