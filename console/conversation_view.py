"""Drawing records and conversations in the console (the support pages share these).

Everything a caller sent or a model answered is untrusted. It is drawn only with
elements that show text as text (``st.text``, ``st.code``, dataframe cells); short
labels that go through markdown (captions, expander titles) are escaped with
``plain`` first. No conversation text ever reaches ``unsafe_allow_html`` or markdown
unescaped, so a prompt holding ``<script>`` or ``![](https://tracker)`` shows as
those characters.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from shared.conversation import (
    ATTACHMENT,
    ERROR,
    REFUSAL,
    THINKING,
    TOOL_CALL,
    TOOL_RESULT,
    Bubble,
    Conversation,
)
from shared.search import RecordSummary

AVATARS = {
    "user": ":material/person:",
    "assistant": ":material/smart_toy:",
    "system": ":material/settings:",
    "tool": ":material/build:",
}
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:=&\"'])")

RECORD_COLUMNS = [
    "created_at",
    "status",
    "model",
    "preview",
    "tenant",
    "user",
    "end_user",
    "tokens",
    "cost_usd",
    "latency_ms",
    "cached",
    "flagged",
    "session_id",
    "id",
]


def plain(text: str | None, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit``, every markdown and HTML character escaped."""
    one_line = " ".join((text or "").split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return _MARKDOWN_SPECIALS.sub(r"\\\1", one_line)


def records_frame(records: Sequence[RecordSummary]) -> pd.DataFrame:
    """A result list as a table (cells are shown as text)."""
    rows = [
        {
            "created_at": r.created_at,
            "status": r.status,
            "model": r.model,
            "preview": r.preview,
            "tenant": r.tenant,
            "user": r.user,
            "end_user": r.end_user,
            "tokens": r.prompt_tokens + r.completion_tokens,
            "cost_usd": float(r.cost_usd),
            "latency_ms": round(r.latency_ms, 1),
            "cached": r.is_cached,
            "flagged": r.is_flagged,
            "session_id": r.session_id,
            "id": r.id,
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


RECORD_COLUMN_CONFIG = {
    "created_at": st.column_config.DatetimeColumn("when (UTC)", format="YYYY-MM-DD HH:mm:ss"),
    "cost_usd": st.column_config.NumberColumn("cost", format="$%.6f"),
    "latency_ms": st.column_config.NumberColumn("latency ms"),
    "preview": st.column_config.TextColumn("last user message", width="large"),
}


def record_label(record: RecordSummary) -> str:
    """A one-line name for a record in a picker (selectbox labels are plain text)."""
    when = record.created_at.strftime("%Y-%m-%d %H:%M:%S")
    preview = " ".join(record.preview.split())[:80]
    return f"{when} · {record.status} · {record.model or '?'} · {preview}"


def show_conversation(conversation: Conversation) -> None:
    if not conversation.bubbles:
        st.info("This record has no conversation to show (its bodies were not kept).")
    for bubble in conversation.bubbles:
        show_bubble(bubble)


def show_bubble(bubble: Bubble) -> None:
    role = bubble.role if bubble.role in AVATARS else "user"
    with st.chat_message(role, avatar=AVATARS[role]):
        if bubble.role not in ("user", "assistant"):
            st.caption(plain(bubble.role, 40))
        for part in bubble.parts:
            if part.kind == TOOL_CALL:
                st.caption(f"tool call {plain(part.name, 80)} {plain(part.call_id, 80)}")
                st.code(_pretty(part.text), language="json", wrap_lines=True)
            elif part.kind == TOOL_RESULT:
                st.caption(f"tool result for {plain(part.call_id, 80)}")
                st.code(part.text, language=None, wrap_lines=True)
            elif part.kind == THINKING:
                with st.expander("thinking"):
                    st.text(part.text)
            elif part.kind in (ATTACHMENT, REFUSAL, ERROR):
                st.caption(part.kind)
                st.text(part.text)
            else:
                st.text(part.text)


def answer_diff(original: str, replay: str) -> str:
    """A unified diff of two answers, line by line ("" when they are the same)."""
    lines = difflib.unified_diff(
        original.splitlines(), replay.splitlines(), "original", "replay", lineterm=""
    )
    return "\n".join(lines)


def pretty_json(text: str | None) -> str:
    return _pretty(text or "")


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
