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
        with columns[index % 3]:
            if name == "monthly_usd":
                usd = present(current.get(name))
                entered = st.number_input(
                    label,
                    min_value=0.0,
                    value=None if usd is None else float(usd),
                    step=1.0,
                    format="%.2f",
                    key=f"{prefix}-{name}",
                    help=hint,
                )
                values[name] = None if entered is None else Decimal(str(round(entered, 8)))
            else:
                number = present(current.get(name))
                entered = st.number_input(
                    label,
                    min_value=0,
                    value=None if number is None else int(number),
                    step=1,
                    key=f"{prefix}-{name}",
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
