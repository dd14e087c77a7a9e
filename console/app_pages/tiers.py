"""Tiers: every limit and policy of a tier, and new tiers. Admins only."""

from __future__ import annotations

import streamlit as st

from console import actions, data
from console.auth import require_role
from console.limits_form import limit_inputs, optional_number, present
from shared import admin
from shared.accounts import MODERATION_CHOICES, TierPolicy

actor = require_role("admin")
st.title("Tiers")
st.caption(
    "A tier holds the default limits of its users. Empty limits are unlimited. "
    "Saved changes reach every proxy process within seconds."
)

tiers = data.tiers()
models = data.model_names()
st.dataframe(
    tiers,
    hide_index=True,
    column_order=["name", "users", "rpm", "tpm", "monthly_tokens", "monthly_usd", "max_tokens"]
    + ["cache_ttl_seconds", "models", "max_prompt_tokens", "moderation", "is_prompt_cache_marked"],
    column_config={"monthly_usd": st.column_config.NumberColumn(format="$%.2f")},
)


def policy_inputs(prefix: str, current: dict[str, object]) -> TierPolicy:
    left, middle, right = st.columns(3)
    max_prompt = present(current.get("max_prompt_tokens"))
    with left:
        max_prompt_tokens = optional_number(
            "Max prompt tokens",
            key=f"{prefix}-max_prompt_tokens",
            current=None if max_prompt is None else int(float(str(max_prompt))),
            min_value=1,
            step=1,
            help="Refuse prompts estimated above this. Empty: no limit.",
        )
    with middle:
        moderation = st.selectbox(
            "Moderation",
            MODERATION_CHOICES,
            index=MODERATION_CHOICES.index(str(current.get("moderation") or "off")),
            key=f"{prefix}-moderation",
            help="Send prompts to OpenAI's moderation endpoint: flag or block them.",
        )
    with right:
        marked = st.toggle(
            "Mark prompts for Anthropic's prompt cache",
            value=bool(present(current.get("is_prompt_cache_marked"))),
            key=f"{prefix}-prompt_cache",
        )
    return TierPolicy(
        max_prompt_tokens=None if max_prompt_tokens is None else int(max_prompt_tokens),
        moderation=moderation,
        is_prompt_cache_marked=marked,
    )


st.subheader("Edit a tier")
if tiers.empty:
    st.info("No tiers yet: create one below.")
else:
    name = st.selectbox("Tier", tiers["name"].tolist(), key="tier")
    current = tiers.set_index("name").loc[name].to_dict()
    with st.form(f"edit-tier-{name}"):
        limits = limit_inputs(f"tier-{name}", current, models, empty_means="unlimited")
        policy = policy_inputs(f"tier-{name}", current)
        if st.form_submit_button("Save tier", key="save-tier", type="primary"):
            if actions.attempt(
                f"Saved tier {name}.", admin.update_tier, actor, name, limits, policy
            ):
                st.rerun()

st.subheader("New tier")
with st.form("new-tier", clear_on_submit=False):
    new_name = st.text_input("Name", key="new-tier-name")
    new_limits = limit_inputs("new-tier", {}, models, empty_means="unlimited")
    new_policy = policy_inputs("new-tier", {})
    if st.form_submit_button("Create tier", key="create-tier"):
        if actions.attempt(
            f"Created tier {new_name}.", admin.create_tier, actor, new_name, new_limits, new_policy
        ):
            st.rerun()
