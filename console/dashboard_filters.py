"""The filter row of the dashboards: time range, tenant, user, key and model.

Ranges end at the end of the current hour (the rollup's grain), so that every run
within an hour asks for the same thing and hits the loaders' cache.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import streamlit as st

from shared.analytics import Filters, Labels

RANGES: dict[str, timedelta | None] = {
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "Last 90 days": timedelta(days=90),
    "This month": None,
    "Custom": None,
}


def time_range(
    choice: str, now: datetime, custom: tuple[date, date] | None = None
) -> tuple[datetime, datetime]:
    """[start, end) in UTC, on whole hours; a custom range covers its last day too."""
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = hour + timedelta(hours=1)
    if choice == "Custom" and custom is not None:
        first, last = custom
        return (
            datetime.combine(first, time(), UTC),
            datetime.combine(last + timedelta(days=1), time(), UTC),
        )
    if choice == "This month":
        return hour.replace(day=1, hour=0), end
    span = RANGES.get(choice) or timedelta(days=7)
    return end - span, end


def dashboard_filters(page: str, labels: Labels, *, default_range: str = "Last 7 days") -> Filters:
    """Draw the filter row (widget keys start with ``page``) and return what it selects."""
    columns = st.columns([1.2, 1, 1, 1, 1])
    with columns[0]:
        choice = st.selectbox(
            "Time range", list(RANGES), index=list(RANGES).index(default_range), key=f"{page}-range"
        )
        custom = None
        if choice == "Custom":
            today = datetime.now(UTC).date()
            picked = st.date_input(
                "From – to (UTC)", (today - timedelta(days=7), today), key=f"{page}-dates"
            )
            if isinstance(picked, tuple) and len(picked) == 2:
                custom = (picked[0], picked[1])
    with columns[1]:
        tenant_ids = st.multiselect(
            "Tenant",
            sorted(labels.tenants, key=lambda i: labels.tenants[i]),
            format_func=lambda i: labels.tenants.get(i, f"#{i}"),
            key=f"{page}-tenants",
            placeholder="All tenants",
        )
    with columns[2]:
        users = [
            i for i in labels.users if not tenant_ids or labels.user_tenants.get(i) in tenant_ids
        ]
        user_ids = st.multiselect(
            "User",
            sorted(users, key=lambda i: labels.users[i]),
            format_func=lambda i: labels.users.get(i, f"#{i}"),
            key=f"{page}-users",
            placeholder="All users",
        )
    with columns[3]:
        owners = set(user_ids or users)
        keys = [i for i in labels.keys if labels.key_users.get(i) in owners]
        key_ids = st.multiselect(
            "Key",
            sorted(keys),
            format_func=lambda i: labels.keys.get(i, f"#{i}"),
            key=f"{page}-keys",
            placeholder="All keys",
        )
    with columns[4]:
        models = st.multiselect(
            "Model", list(labels.models), key=f"{page}-models", placeholder="All models"
        )
    start, end = time_range(choice, datetime.now(UTC), custom)
    return Filters(
        start=start,
        end=end,
        tenant_ids=tuple(tenant_ids),
        user_ids=tuple(user_ids),
        key_ids=tuple(key_ids),
        models=tuple(models),
    )
