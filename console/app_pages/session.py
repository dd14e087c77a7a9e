"""Session: every call of one session (``x-metergate-session-id``), in the order they happened,
so support can follow a whole conversation. Support and admins. ``?session=<id>``."""

from __future__ import annotations

import streamlit as st

from console import data
from console.auth import require_role
from console.conversation_view import (
    RECORD_COLUMN_CONFIG,
    plain,
    records_frame,
    show_bubble,
)
from shared.conversation import read_conversation
from shared.search import MAX_SESSION_RECORDS

CONVERSATIONS_PAGE = "app_pages/conversations.py"
MAX_CALLS_DRAWN = 100  # the table lists them all; bubbles for the first hundred

actor = require_role("support")
st.title("Session")
session_id = st.text_input("Session id", value=st.query_params.get("session", ""), key="session-id")
if session_id.strip() and session_id != st.query_params.get("session"):
    st.query_params["session"] = session_id.strip()

calls = data.session_calls(session_id.strip()) if session_id.strip() else []
if not session_id.strip():
    st.info("Enter a session id, or open a session from a conversation.")
elif not calls:
    st.info("No call carries this session id.")
else:
    cost = sum(float(call.cost_usd) for call in calls)
    tokens = sum(call.prompt_tokens + call.completion_tokens for call in calls)
    left, middle, right = st.columns(3)
    left.metric("Calls", len(calls))
    middle.metric("Tokens", tokens)
    right.metric("Cost", f"${cost:.6f}")
    if len(calls) == MAX_SESSION_RECORDS:
        st.warning(f"Showing the first {MAX_SESSION_RECORDS} calls of this session.")
    st.dataframe(records_frame(calls), hide_index=True, column_config=RECORD_COLUMN_CONFIG)
    for number, call in enumerate(calls[:MAX_CALLS_DRAWN], start=1):
        st.divider()
        st.caption(
            f"Call {number} · {call.created_at:%Y-%m-%d %H:%M:%S} UTC · {call.status} · "
            f"{plain(call.model, 80)} · ${call.cost_usd:.6f}"
        )
        detail = data.record_detail(call.id)
        if detail is not None:
            conversation = read_conversation(
                call.endpoint, detail.request_body, detail.response_body
            )
            # Each call resends the history: show what is new, its last user turn and answer.
            users = [b for b in conversation.prompt if b.role in ("user", "tool")]
            for bubble in [*users[-1:], *conversation.answer]:
                show_bubble(bubble)
        st.page_link(CONVERSATIONS_PAGE, label="Open this call", query_params={"record": call.id})
