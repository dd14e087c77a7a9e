"""Conversations: search the request log, open a record as a chat, flag it, replay it.

Support and admins. ``?record=<id>`` opens one record (``console.record_panel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import streamlit as st

from console import data, record_panel
from console.auth import require_role
from console.conversation_view import RECORD_COLUMN_CONFIG, record_label, records_frame
from shared.search import InvalidQuery, RecordPage, RecordQuery

PAGE_SIZE = 50
ANY = "any"
QUERY_KEY = "conv-query"
CURSORS_KEY = "conv-cursors"  # the cursor of each page shown so far (None: the first)
STATUSES = [ANY, "2xx", "4xx", "5xx", "error", "400", "401", "403", "404", "429", "499", "502"]
STATUSES += ["503", "504"]
FLAGS = {ANY: "", "flagged": "flagged", "open flag": "open", "not flagged": "unflagged"}
CACHE = {ANY: None, "cache hits": True, "cache misses": False}

actor = require_role("support")


def open_record(record_id: str) -> None:
    st.query_params["record"] = record_id
    st.rerun()


def search_form(shown: RecordQuery) -> RecordQuery | None:
    """The query the form submits (None: not submitted on this run). The form starts from
    ``shown``, the search whose results are on the page (back from a record, say)."""
    tenants, users, keys = data.tenants(), data.users(), data.keys()
    key_labels = {
        f"{k['name'] or 'key'} ({k['prefix']}) {k['user']}": int(k["id"])
        for _, k in keys.iterrows()
    }
    tenant_names = [ANY, *tenants["name"].tolist()]
    emails = [ANY, *users["email"].tolist()]
    models = [ANY, *data.model_names()]
    with st.form("conv-search"):
        text = st.text_input(
            "Text in prompts and answers",
            value=shown.text,
            key="q-text",
            placeholder='words to find, "an exact phrase", -excluded',
        )
        left, middle, right = st.columns(3)
        request_id = left.text_input(
            "Request id",
            value=shown.request_id,
            key="q-request-id",
            help="Gateway record id, x-request-id or answer id.",
        )
        session_id = middle.text_input("Session id", value=shown.session_id, key="q-session")
        end_user = right.text_input("End user", value=shown.end_user, key="q-end-user")
        left, middle, right = st.columns(3)
        tenant = left.selectbox(
            "Tenant",
            tenant_names,
            index=_index(tenant_names, _name_of(tenants, "name", shown.tenant_id)),
            key="q-tenant",
        )
        user = middle.selectbox(
            "User",
            emails,
            index=_index(emails, _name_of(users, "email", shown.user_id)),
            key="q-user",
        )
        labels = [ANY, *key_labels]
        by_id = {key_id: label for label, key_id in key_labels.items()}
        key = right.selectbox(
            "Key", labels, index=_index(labels, by_id.get(shown.key_id or -1)), key="q-key"
        )
        cols = st.columns(4)
        model = cols[0].selectbox("Model", models, index=_index(models, shown.model), key="q-model")
        status = cols[1].selectbox(
            "Status", STATUSES, index=_index(STATUSES, shown.status), key="q-status"
        )
        flags = list(FLAGS)
        flag = cols[2].selectbox(
            "Flag", flags, index=_index(flags, _key_of(FLAGS, shown.flag)), key="q-flag"
        )
        caches = list(CACHE)
        cache = cols[3].selectbox(
            "Cache", caches, index=_index(caches, _key_of(CACHE, shown.is_cached)), key="q-cache"
        )
        left, right = st.columns(2)
        since = left.date_input(
            "From (UTC)", value=shown.since.date() if shown.since else None, key="q-since"
        )
        until = right.date_input(
            "To (UTC, inclusive)",
            value=(shown.until - timedelta(days=1)).date() if shown.until else None,
            key="q-until",
        )
        if not st.form_submit_button("Search", key="q-submit", type="primary"):
            return None
    return RecordQuery(
        text=text,
        request_id=request_id,
        session_id=session_id,
        end_user=end_user,
        tenant_id=_id_of(tenants, "name", tenant),
        user_id=_id_of(users, "email", user),
        key_id=None if key == ANY else key_labels[key],
        model="" if model == ANY else model,
        status="" if status == ANY else status,
        flag=FLAGS[flag],
        is_cached=CACHE[cache],
        since=_day_start(since),
        until=_day_start(until + timedelta(days=1)) if isinstance(until, date) else None,
    )


def _index(options: list[str], value: object) -> int:
    return options.index(value) if isinstance(value, str) and value in options else 0


def _name_of(frame: pd.DataFrame, column: str, row_id: int | None) -> str | None:
    if row_id is None:
        return None
    rows = frame.loc[frame["id"] == row_id, column]
    return str(rows.iloc[0]) if len(rows) else None


def _key_of(choices: Mapping[str, object], value: object) -> str:
    return next((name for name, chosen in choices.items() if chosen == value), ANY)


def _id_of(frame: pd.DataFrame, column: str, value: str) -> int | None:
    if value == ANY:
        return None
    return int(frame.loc[frame[column] == value, "id"].iloc[0])


def _day_start(day: object) -> datetime | None:
    return datetime.combine(day, time.min, UTC) if isinstance(day, date) else None


def results(query: RecordQuery) -> None:
    cursors: list[str | None] = st.session_state.setdefault(CURSORS_KEY, [None])
    try:
        page: RecordPage = data.record_page(query, cursors[-1], PAGE_SIZE)
    except InvalidQuery as exc:
        st.error(str(exc))
        return
    if not page.records:
        st.info("No record matches this search.")
        return
    st.caption(f"Page {len(cursors)} · newest first · {len(page.records)} records")
    selection = st.dataframe(
        records_frame(page.records),
        hide_index=True,
        column_config=RECORD_COLUMN_CONFIG,
        on_select="rerun",
        selection_mode="single-row",
        key="conv-results",
    )
    rows = selection.selection.rows if selection is not None else []
    if rows:
        open_record(page.records[rows[0]].id)
    labels = {record_label(r): r.id for r in page.records}
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    chosen = left.selectbox("Conversation", list(labels), key="conv-pick")
    if right.button("Open", key="conv-open", type="primary"):
        open_record(labels[chosen])
    newer, older = st.columns(2)
    if newer.button("← Newer", key="page-newer", disabled=len(cursors) == 1):
        cursors.pop()
        st.rerun()
    if older.button("Older →", key="page-older", disabled=page.next_cursor is None):
        cursors.append(page.next_cursor)
        st.rerun()


record_id = st.query_params.get("record")
if record_id:
    record_panel.show(actor, record_id)
else:
    st.title("Conversations")
    submitted = search_form(st.session_state.get(QUERY_KEY, RecordQuery()))
    if submitted is not None:
        st.session_state[QUERY_KEY] = submitted
        st.session_state[CURSORS_KEY] = [None]
    results(st.session_state.get(QUERY_KEY, RecordQuery()))
