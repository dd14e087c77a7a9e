"""Model prices (USD per 1M tokens) and fallback chains. Admins only."""

from __future__ import annotations

from decimal import Decimal

import streamlit as st

from console import actions, data
from console.auth import require_role
from console.limits_form import optional_number, present
from shared import admin
from shared.catalogue import PROVIDERS

NEW_MODEL = "➕ new model"
PRICE_INPUTS = (
    ("input_per_mtok", "Input"),
    ("cached_input_per_mtok", "Cached input (cache read)"),
    ("cache_write_per_mtok", "Cache write"),
    ("output_per_mtok", "Output"),
)

actor = require_role("admin")
st.title("Prices")
st.caption(
    "USD per million tokens. A call is priced when it ends, at the prices of the model "
    "that answered; changes apply to calls from now on."
)
prices = data.prices()
money = st.column_config.NumberColumn(format="$%.4f")
st.dataframe(
    prices,
    hide_index=True,
    column_config={name: money for name, _ in PRICE_INPUTS},
)

st.subheader("Add or change a model")
choice = st.selectbox("Model", [NEW_MODEL, *prices["name"].tolist()], key="price-model")
is_new = choice == NEW_MODEL
current = {} if is_new else prices.set_index("name").loc[choice].to_dict()
form_key = "new" if is_new else choice
with st.form(f"price-{form_key}"):
    name = st.text_input("Name", key="price-new-name") if is_new else choice
    left, right = st.columns(2)
    provider = left.selectbox(
        "Provider",
        PROVIDERS,
        index=PROVIDERS.index(current.get("provider", PROVIDERS[0])),
        key=f"price-{form_key}-provider",
    )
    upstream_model = right.text_input(
        "Upstream model",
        value=current.get("upstream_model") or "",
        key=f"price-{form_key}-upstream",
        help="The provider's name for it. Empty: the same as the name.",
    )
    values: dict[str, Decimal | None] = {}
    for column, (field, label) in zip(st.columns(4), PRICE_INPUTS, strict=True):
        shown = present(current.get(field))
        with column:
            entered = optional_number(
                label,
                key=f"price-{form_key}-{field}",
                current=None if shown is None else float(shown),
                min_value=0.0,
                step=0.01,
                format="%.4f",
                help="Empty: the input price." if "cache" in field else None,
            )
        values[field] = None if entered is None else Decimal(str(round(entered, 6)))
    same_provider = prices[(prices["provider"] == provider) & (prices["name"] != name)]
    fallbacks = st.multiselect(
        "Fallbacks, in order",
        same_provider["name"].tolist(),
        default=[
            m for m in (present(current.get("fallbacks")) or []) if m in set(same_provider["name"])
        ],
        key=f"price-{form_key}-fallbacks",
        help="Tried in order when this model keeps failing upstream (same provider only).",
    )
    if st.form_submit_button("Save model", key="save-price", type="primary"):
        if values["input_per_mtok"] is None or values["output_per_mtok"] is None:
            st.error("Input and output prices are required.")
        elif actions.attempt(
            f"Saved the prices of {name}.",
            admin.save_model_price,
            actor,
            str(name),
            provider=provider,
            upstream_model=upstream_model.strip() or None,
            input_per_mtok=values["input_per_mtok"],
            output_per_mtok=values["output_per_mtok"],
            cached_input_per_mtok=values["cached_input_per_mtok"],
            cache_write_per_mtok=values["cache_write_per_mtok"],
            fallbacks=fallbacks,
        ):
            st.rerun()
