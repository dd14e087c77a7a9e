"""Spend, Latency, Cache and Export pages: a smoke test and an interaction test each.

Each page runs on its own (``AppTest.from_file`` on the page script) with a viewer
signed in as the console's gate would leave it, against the console's PostgreSQL
database holding calls of a fresh tenant made in the last hours.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from console import dashboards
from console.auth import SESSION_KEY, SignIn
from shared import accounts
from shared.accounts import Limits
from shared.console_users import Actor
from shared.db import transaction
from shared.records import CallRecord, write_records
from tests.console.conftest import APP_TIMEOUT_SECONDS
from tests.shared.usage_records import call
from tests.support import seed_accounts

PAGES = Path(__file__).resolve().parents[2] / "console" / "app_pages"


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    user: str
    key_id: int
    records: list[CallRecord]


@pytest.fixture()
def tenant(console_env: str, console_engine: Engine) -> Iterator[Tenant]:
    """A fresh tenant whose user's tier allows $10 a month, with 12 calls in the last hours."""
    acct = seed_accounts(console_engine, limits=Limits(monthly_usd=Decimal(10)))
    with transaction(console_engine) as session:
        user = accounts.get_user(session, acct.user)
        ids = {"tenant_id": user.tenant_id, "user_id": user.id, "key_id": acct.key_id}
    now = datetime.now(UTC)
    ago = within_this_month(now, timedelta(minutes=82))
    records = [
        call(
            now - ago(timedelta(minutes=5 + 7 * i)),
            model="gpt-4o-mini" if i % 2 else "claude-3-5-haiku",
            provider="openai" if i % 2 else "anthropic",
            end_user=f"end-user-{i % 3}",
            prompt_tokens=100 + i,
            completion_tokens=10,
            cost_usd=Decimal("0.25"),
            latency_ms=200.0 + 40 * i,
            upstream_latency_ms=180.0 + 40 * i,
            overhead_ms=3.0,
            ttft_ms=90.0 + i,
            **ids,
        )
        for i in range(10)
    ]
    records.append(
        call(
            now - ago(timedelta(minutes=3)),
            is_cached=True,
            prompt_tokens=100,
            cache_saved_usd=Decimal("0.25"),
            model="gpt-4o-mini",
            provider="openai",
            latency_ms=2.0,
            **ids,
        )
    )
    records.append(
        call(
            now - ago(timedelta(minutes=2)),
            status=429,
            error_code="rate_limit_exceeded",
            refusal_reason="rate_limit",
            model="gpt-4o-mini",
            provider="openai",
            **ids,
        )
    )
    write_records(console_engine, records)
    dashboards.labels.clear()  # type: ignore[attr-defined]
    yield Tenant(user.tenant_id, acct.tenant, acct.user, acct.key_id, records)


def within_this_month(now: datetime, span: timedelta) -> Callable[[timedelta], timedelta]:
    """How long ago, scaled so that ``span`` ago is still in this month (UTC): the pages
    show month-to-date spend, and in a month's first hours "82 minutes ago" is last month."""
    since_month_start = now - now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    scale = min(1.0, (since_month_start - timedelta(seconds=1)) / span)
    return lambda ago: ago * max(scale, 0.0)


def open_page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=APP_TIMEOUT_SECONDS)
    viewer = f"viewer-{uuid.uuid4().hex[:8]}"
    at.session_state[SESSION_KEY] = SignIn(viewer, "password", time.time())
    at.session_state["metergate_actor"] = Actor(viewer, "viewer")
    at.run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> dict[str, dict[str, Any]]:
    """The page's plotly figures by title."""
    figures = [json.loads(element.proto.spec) for element in at.get("plotly_chart")]
    return {figure["layout"]["title"]["text"]: figure for figure in figures}


def traces(figure: dict[str, Any]) -> set[str]:
    return {trace.get("name", "") for trace in figure["data"]}


def metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


@pytest.mark.parametrize("page", ["spend", "latency", "cache", "export"])
def test_page_needs_a_signed_in_viewer(console_env: str, page: str) -> None:
    at = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=APP_TIMEOUT_SECONDS).run()
    assert [e.value for e in at.error] == ["Please sign in."]
    assert not at.get("plotly_chart")


def test_spend_page_shows_every_section(tenant: Tenant) -> None:
    at = open_page("spend")
    assert at.title[0].value == "Spend"
    titles = set(charts(at))
    assert {"Spend (USD) by model", "Tenants"} <= titles
    assert "USD saved by caching" in titles
    assert "Month-end forecast" in metrics(at)


def test_spend_page_filters_by_tenant_and_stacks_by_user(tenant: Tenant) -> None:
    at = open_page("spend")
    at.multiselect(key="spend-tenants").set_value([tenant.id]).run()
    shown = metrics(at)
    assert shown["Spend"] == "$2.50" and shown["Calls"] == "12"
    assert shown["Saved by the response cache"] == "$0.25"
    assert traces(charts(at)["Spend (USD) by model"]) == {"gpt-4o-mini", "claude-3-5-haiku"}

    at.selectbox(key="spend-stack").set_value("user").run()
    at.radio(key="spend-measure").set_value("Tokens").run()
    at.segmented_control(key="spend-top").set_value("end_user").run()
    assert not at.exception
    assert traces(charts(at)["Tokens by user"]) == {tenant.user}
    ranked = at.dataframe[0].value  # end-user-0 made 4 paid calls, the others 3
    assert ranked["name"].tolist() == [
        *(f"end-user-{i} · {tenant.name}" for i in range(3)),
        f"(none) · {tenant.name}",
    ]
    bars = [e.proto for e in at.get("progress")]
    assert any(tenant.user in bar.text and "$2.50 of $10.00" in bar.text for bar in bars)
    assert metrics(at)[f"Spent in {datetime.now(UTC):%Y-%m}"] == "$2.50"


def test_latency_page_shows_percentiles_errors_and_refusals(tenant: Tenant) -> None:
    at = open_page("latency")
    assert at.title[0].value == "Latency"
    assert {"Total latency", "Error rate by type", "Refusals by reason"} <= set(charts(at))


def test_latency_page_switches_measure_and_percentiles(tenant: Tenant) -> None:
    at = open_page("latency")
    at.multiselect(key="latency-tenants").set_value([tenant.id]).run()
    at.radio(key="latency-metric").set_value("ttft").run()
    at.multiselect(key="latency-pcts").set_value(["p99"]).run()
    assert not at.exception
    figures = charts(at)
    ttft = figures["Time to first token"]
    assert {trace["legendgroup"].split(", ")[0] for trace in ttft["data"]} == {
        "gpt-4o-mini",
        "claude-3-5-haiku",
    }
    assert all(trace["legendgroup"].endswith("p99") for trace in ttft["data"])
    assert traces(figures["Error rate by type"]) == {"rate_limit_exceeded"}
    assert traces(figures["Refusals by reason"]) == {"rate_limit"}
    summary = at.dataframe[0].value
    assert set(summary.index) == {"gpt-4o-mini", "claude-3-5-haiku"}
    assert "ttft p95 (ms)" in summary.columns


def test_cache_page_shows_hit_rate_and_savings(tenant: Tenant) -> None:
    at = open_page("cache")
    assert at.title[0].value == "Cache"
    assert {"Hit rate by model", "USD saved", "Tokens saved"} <= set(charts(at))


def test_cache_page_hit_rate_by_tenant(tenant: Tenant) -> None:
    at = open_page("cache")
    at.multiselect(key="cache-tenants").set_value([tenant.id]).run()
    assert metrics(at)["Hit rate"] == f"{1 / 11:.1%}"  # 1 hit in 11 answered calls
    assert metrics(at)["Tokens served from the cache"] == "100"
    at.radio(key="cache-by").set_value("tenant").run()
    assert not at.exception
    assert traces(charts(at)["Hit rate by tenant"]) == {tenant.name}


def test_export_page_offers_a_csv(tenant: Tenant) -> None:
    at = open_page("export")
    assert at.title[0].value == "Export"
    assert [b.proto.label for b in at.get("download_button")] == ["Download CSV"]


def test_export_page_previews_the_chosen_tenants_period(tenant: Tenant) -> None:
    at = open_page("export")
    at.multiselect(key="export-tenants").set_value([tenant.id]).run()
    preview = at.dataframe[0].value
    assert preview["key_id"].tolist() == [tenant.key_id]
    assert (int(preview["requests"][0]), float(preview["cost_usd"][0])) == (12, 2.5)
    assert metrics(at)["Cost"] == "$2.50"

    at.radio(key="export-kind").set_value("Dates").run()
    today = datetime.now(UTC).date()
    at.date_input(key="export-dates").set_value(
        (today - timedelta(days=400), today - timedelta(days=399))
    ).run()
    assert not at.exception
    assert [i.value for i in at.info] == ["No usage in this period."]
