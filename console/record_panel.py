"""One record in the console: the conversation as chat bubbles, its figures, the raw JSON,
its flags, and replay with a side-by-side diff. Drawn by the Conversations page for
``?record=<id>``; every write checks the actor's role again in ``shared/``."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import actions, data
from console.conversation_view import answer_diff, plain, pretty_json, show_conversation
from console.replay import ReplayError, ReplayRequest, ReplayResult, replay_record
from shared import flags
from shared.console_users import Actor, PermissionDenied
from shared.conversation import read_conversation
from shared.search import RecordDetail

CONVERSATIONS_PAGE = "app_pages/conversations.py"
SESSION_PAGE = "app_pages/session.py"
REPLAY_RESULT_KEY = "replay-result-{}"
PROVIDER_OF_DIALECT = {"openai": "openai", "anthropic": "anthropic"}


# Inputs that belong to the record on show: forgotten when another record opens, so a
# replay never goes out with the system prompt or model picked for a different record.
RECORD_INPUTS = (
    "flag-reason",
    "flag-reason-other",
    "flag-note",
    "unflag-reason",
    "replay-model",
    "replay-edit-system",
    "replay-system",
)
SHOWN_KEY = "record-panel-shown"


def show(actor: Actor, record_id: str) -> None:
    if st.session_state.get(SHOWN_KEY) != record_id:
        for key in RECORD_INPUTS:
            st.session_state.pop(key, None)
        st.session_state[SHOWN_KEY] = record_id
    if st.button("← Back to the search", key="back-to-search"):
        del st.query_params["record"]
        st.rerun()
    detail = data.record_detail(record_id)
    if detail is None:
        st.warning("There is no record with this id (it may have been deleted).")
        return
    summary = detail.summary
    st.title("Conversation")
    st.caption(f"Record {plain(summary.id)} · {summary.created_at:%Y-%m-%d %H:%M:%S} UTC")
    figures(detail)
    links(detail)
    conversation = read_conversation(summary.endpoint, detail.request_body, detail.response_body)
    show_conversation(conversation)
    raw(detail)
    flag_section(actor, detail)
    replay_section(actor, detail, conversation.system_prompt, conversation.answer_text())


def figures(detail: RecordDetail) -> None:
    s = detail.summary
    cols = st.columns(5)
    cols[0].metric("Status", s.status)
    cols[1].metric("Model", detail.answered_model or s.model or "-")
    cols[2].metric("Tokens in / out", f"{s.prompt_tokens} / {s.completion_tokens}")
    cols[3].metric("Cost", f"${s.cost_usd:.6f}")
    cols[4].metric("Latency", f"{s.latency_ms:.0f} ms")
    cols = st.columns(5)
    cols[0].metric("Upstream", _ms(detail.upstream_latency_ms))
    cols[1].metric("First token", _ms(detail.ttft_ms))
    cols[2].metric("Gateway overhead", _ms(detail.overhead_ms))
    cols[3].metric(
        "Cache read / write", f"{detail.cache_read_tokens} / {detail.cache_write_tokens}"
    )
    cols[4].metric("Saved", f"${detail.cache_saved_usd:.6f}", help="By the cache or prompt cache.")
    facts = {
        "tenant": s.tenant,
        "user": s.user,
        "key": s.key,
        "end user": s.end_user,
        "session": s.session_id,
        "endpoint": f"{detail.dialect} {s.endpoint}" + (" (stream)" if s.is_stream else ""),
        "provider / upstream model": f"{detail.provider or '-'} / {detail.upstream_model or '-'}",
        "answered from cache": s.is_cached,
        "refusal reason": detail.refusal_reason,
        "error": f"{s.error_code or ''} {detail.error_message or ''}".strip() or None,
        "output valid": detail.output_valid,
        "client request id": s.client_request_id,
        "answer id": detail.response_id,
        "upstream request id": detail.upstream_request_id,
        "client": f"{detail.client_ip or '-'} {detail.user_agent or ''}".strip(),
        "replay of": s.replay_of,
    }
    table = pd.DataFrame(
        [(name, "" if value is None else str(value)) for name, value in facts.items()],
        columns=["field", "value"],
    )
    with st.expander("Details", expanded=False):
        st.dataframe(table, hide_index=True, width="stretch")


def links(detail: RecordDetail) -> None:
    s = detail.summary
    if s.session_id:
        st.page_link(
            SESSION_PAGE, label="Follow the whole session", query_params={"session": s.session_id}
        )
    if s.replay_of:
        st.page_link(
            CONVERSATIONS_PAGE, label="Open the original", query_params={"record": s.replay_of}
        )
    for replay in detail.replays:
        st.page_link(
            CONVERSATIONS_PAGE,
            label=f"Replay on {plain(replay.model, 80)} at {replay.created_at:%H:%M:%S} "
            f"({replay.status})",
            query_params={"record": replay.id},
        )


def raw(detail: RecordDetail) -> None:
    with st.expander("Raw request JSON"):
        st.code(pretty_json(detail.request_body), language="json", wrap_lines=True)
    with st.expander("Raw response JSON"):
        st.code(pretty_json(detail.response_body), language="json", wrap_lines=True)
    if detail.attempts:
        with st.expander(f"Upstream attempts ({len(detail.attempts)})"):
            st.code(json.dumps(detail.attempts, indent=2, default=str), language="json")


def flag_section(actor: Actor, detail: RecordDetail) -> None:
    record_id = detail.summary.id
    st.subheader("Flags")
    current = data.record_flags(record_id)
    if current:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "reason": f.reason,
                        "source": f.source,
                        "status": f.status,
                        "assignee": f.assignee,
                        "note": f.note,
                        "by": f.created_by,
                    }
                    for f in current
                ]
            ),
            hide_index=True,
        )
        by_reason = {f.reason: f.id for f in current}
        left, right = st.columns([4, 1], vertical_alignment="bottom")
        reason = left.selectbox("Flag to remove", list(by_reason), key="unflag-reason")
        if right.button("Unflag", key="unflag"):
            message = f"Removed the flag {reason!r}."
            if actions.attempt(message, flags.unflag, actor, by_reason[reason]) is not None:
                st.rerun()
    with st.form("flag-record", clear_on_submit=True):
        left, right = st.columns(2)
        reason = left.selectbox("Reason", flags.MANUAL_REASONS, key="flag-reason")
        other = right.text_input("…or another reason", key="flag-reason-other")
        note = st.text_area("Note", key="flag-note")
        if st.form_submit_button("Flag this record", key="flag-submit"):
            chosen = other.strip() or reason
            if actions.attempt(
                "Flagged the record.", flags.flag_record, actor, record_id, chosen, note
            ):
                st.rerun()


def replay_section(
    actor: Actor, detail: RecordDetail, system_prompt: str | None, original_answer: str
) -> None:
    s = detail.summary
    st.subheader("Replay")
    provider = detail.provider or PROVIDER_OF_DIALECT.get(detail.dialect)
    prices = data.prices()
    models = prices.loc[prices["provider"] == provider, "name"].tolist() or data.model_names()
    original_model = s.model if s.model in models else None
    with st.form("replay"):
        model = st.selectbox(
            "Model",
            models,
            index=models.index(original_model) if original_model else 0,
            key="replay-model",
            help="The same model, or another of the same provider.",
        )
        is_edited = st.toggle("Edit the system prompt", key="replay-edit-system")
        edited = st.text_area("System prompt", value=system_prompt or "", key="replay-system")
        submitted = st.form_submit_button("Replay through the proxy", key="replay-submit")
    st.caption("A replay is a new call on the console's own key, linked to this record.")
    result_key = REPLAY_RESULT_KEY.format(s.id)
    if submitted:
        request = ReplayRequest(s.id, model, edited if is_edited else None)
        try:
            with st.spinner("Replaying…"):
                sent = replay_record(data.engine(), actor, detail, request, data.settings())
        except (PermissionDenied, ReplayError) as exc:
            st.error(str(exc))
        else:
            st.session_state[result_key] = sent
            data.refresh_config()
    result: ReplayResult | None = st.session_state.get(result_key)
    if result is not None:
        compare(original_answer, result)


def compare(original: str, result: ReplayResult) -> None:
    if result.error:
        st.error(plain(result.error, 500))
    if result.record_id:
        st.page_link(
            CONVERSATIONS_PAGE,
            label="Open the replay's record",
            query_params={"record": result.record_id},
        )
    st.caption(f"Replay cost: ${result.cost_usd or '?'} (billed to the console's key)")
    left, right = st.columns(2)
    with left:
        st.markdown("**Original answer**")
        st.text(original or "(no answer)")
    with right:
        st.markdown("**Replay answer**")
        st.text(result.answer_text or "(no answer)")
    diff = answer_diff(original, result.answer_text)
    if diff:
        st.code(diff, language="diff", wrap_lines=True)
    else:
        st.success("The replay answered exactly the same.")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
