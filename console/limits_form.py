"""The inputs of a set of limits (rpm, tpm, monthly quotas, max_tokens, cache TTL, models).

Used by the tier form (an empty input: unlimited) and the override forms (an empty
input: the value inherited from the tier or user, shown in the help text).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pandas as pd
import streamlit as st

from shared.accounts import Limits

INTEGER_LIMITS = (
    ("rpm", "Requests / minute"),
    ("tpm", "Tokens / minute"),
    ("monthly_tokens", "Monthly tokens"),
    ("max_tokens", "max_tokens ceiling"),
    ("cache_ttl_seconds", "Cache TTL (s)"),
)


def present(value: Any) -> Any:
    """``value`` with pandas' missing markers (NaN, NaT, None) turned into None."""
    if isinstance(value, list | tuple):
        return value
    return None if value is None or pd.isna(value) else value


def optional_number(label: str, *, key: str, current: float | None, **options: Any) -> float | None:
    """A number input showing ``current`` that may be emptied (``None``).

    Streamlit lets a person empty a number input only when its default is ``None``,
    so the current value goes in through Session State, once per appearance.
    """
    if key not in st.session_state:
        st.session_state[key] = current
    value: float | None = st.number_input(label, value=None, key=key, **options)
    return value


def limit_inputs(
    prefix: str,
    current: Mapping[str, Any],
    models: list[str],
    *,
    empty_means: str,
    inherited: Mapping[str, Any] | None = None,
) -> Limits:
    """Draw the inputs (keys ``{prefix}-{field}``) and return the limits they hold."""
    inherited = inherited or {}
    values: dict[str, Any] = {}
    columns = st.columns(3)
    fields = [*INTEGER_LIMITS[:3], ("monthly_usd", "Monthly USD"), *INTEGER_LIMITS[3:]]
    for index, (name, label) in enumerate(fields):
        hint = _hint(empty_means, present(inherited.get(name)))
        now = present(current.get(name))
        with columns[index % 3]:
            if name == "monthly_usd":
                entered = optional_number(
                    label,
                    key=f"{prefix}-{name}",
                    current=None if now is None else float(now),
                    min_value=0.0,
                    step=1.0,
                    format="%.2f",
                    help=hint,
                )
                values[name] = None if entered is None else Decimal(str(round(entered, 8)))
            else:
                entered = optional_number(
                    label,
                    key=f"{prefix}-{name}",
                    current=None if now is None else int(now),
                    min_value=0,
                    step=1,
                    help=hint,
                )
                values[name] = None if entered is None else int(entered)
    allowed = present(current.get("models")) or []
    values["models"] = (
        st.multiselect(
            "Allowed models",
            options=sorted(set(models) | set(allowed)),
            default=list(allowed),
            key=f"{prefix}-models",
            help=_hint("every model" if empty_means == "unlimited" else empty_means, None),
        )
        or None
    )
    return Limits(**values)


def _hint(empty_means: str, inherited: Any) -> str:
    if inherited is None:
        return f"Empty: {empty_means}."
    return f"Empty: {empty_means} ({inherited})."
