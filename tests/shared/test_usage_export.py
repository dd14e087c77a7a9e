"""``metergate usage export``: usage per tenant / user / key / end user for a period, as
CSV and as JSON meter events, read from the rollups (PostgreSQL and SQLite)."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from proxy.cli import main
from shared import accounts
from shared.billing import BillingPeriod, month_period
from shared.db import transaction
from shared.models import ApiKey
from shared.records import write_records
from shared.usage_export import meter_events, usage_csv, usage_rows
from tests.shared.usage_records import call
from tests.support import Accounts, seed_accounts


@pytest.fixture()
def month() -> datetime:
    """A future month of this test's own (other tests write to other months)."""
    index = random.randrange(0, 60_000)
    return datetime(3000 + index // 12, 1 + index % 12, 1, tzinfo=UTC)


def _seed(engine: Engine, month: datetime) -> tuple[Accounts, Accounts, int]:
    """Two tenants; the first with a second key. Returns (first, second, spare key id)."""
    first, second = seed_accounts(engine), seed_accounts(engine)
    with transaction(engine) as session:
        tenant = accounts.get_tenant(session, first.tenant)
        user = accounts.get_user(session, first.user)
        spare, _ = accounts.create_key(session, first.user, name="spare")
        other = accounts.get_user(session, second.user)
        ids = {"tenant_id": tenant.id, "user_id": user.id}
        other_ids = {"tenant_id": other.tenant_id, "user_id": other.id}
        spare_id = spare.id
    write_records(
        engine,
        [
            call(
                month + timedelta(hours=1),
                key_id=first.key_id,
                end_user="alice",
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=Decimal("0.25"),
                **ids,
            ),
            call(
                month + timedelta(days=3),
                key_id=spare_id,
                end_user="alice",
                prompt_tokens=20,
                completion_tokens=1,
                cost_usd=Decimal("0.5"),
                **ids,
            ),
            call(
                month + timedelta(days=4),
                key_id=spare_id,
                end_user="bob",
                prompt_tokens=3,
                cost_usd=Decimal("0.125"),
                **ids,
            ),
            call(  # no end user: counted for the key, user and tenant only
                month + timedelta(days=5),
                key_id=first.key_id,
                prompt_tokens=7,
                cost_usd=Decimal("1"),
                **ids,
            ),
            call(
                month + timedelta(days=6),
                key_id=second.key_id,
                end_user="alice",  # another tenant's alice: a customer of her own
                prompt_tokens=100,
                completion_tokens=50,
                cost_usd=Decimal("2"),
                **other_ids,
            ),
            call(month - timedelta(seconds=1), key_id=first.key_id, cost_usd=Decimal(9), **ids),
            call(month + timedelta(hours=2), status=401, error_code="invalid_api_key"),
        ],
    )
    return first, second, spare_id


def _period(month: datetime) -> BillingPeriod:
    return month_period(f"{month.year:04d}-{month.month:02d}")


def test_usage_is_summed_per_tenant_user_key_and_end_user(engine: Engine, month: datetime) -> None:
    first, second, spare_id = _seed(engine, month)
    with transaction(engine) as session:
        spare_prefix = session.get_one(ApiKey, spare_id).prefix
        main_prefix = session.get_one(ApiKey, first.key_id).prefix
    period = _period(month)

    tenants = {r.customer: r for r in usage_rows(engine, period, "tenant")}
    users = {r.customer: r for r in usage_rows(engine, period, "user")}
    keys = {r.customer: r for r in usage_rows(engine, period, "key")}
    end_users = {r.customer: r for r in usage_rows(engine, period, "end_user")}

    ours = tenants[f"tenant:{first.tenant}"]
    assert (ours.requests, ours.prompt_tokens, ours.completion_tokens) == (4, 40, 6)
    assert ours.cost_usd == Decimal("1.875")
    assert tenants[f"tenant:{second.tenant}"].cost_usd == Decimal("2")
    assert users[f"user:{first.user}"].cost_usd == Decimal("1.875")
    assert keys[f"key:{main_prefix}"].cost_usd == Decimal("1.25")
    assert keys[f"key:{spare_prefix}"].cost_usd == Decimal("0.625")
    alice = end_users[f"end_user:{first.tenant}/alice"]
    assert (alice.requests, alice.prompt_tokens, alice.cost_usd) == (2, 30, Decimal("0.75"))
    assert end_users[f"end_user:{first.tenant}/bob"].cost_usd == Decimal("0.125")
    assert end_users[f"end_user:{second.tenant}/alice"].cost_usd == Decimal("2")
    assert len(end_users) == 3  # bob of the first tenant, and the two alices


def test_meter_events_are_one_per_customer_and_meter_with_stable_identifiers(
    engine: Engine, month: datetime
) -> None:
    first, _, _ = _seed(engine, month)
    with transaction(engine) as session:
        tenant_id = accounts.get_tenant(session, first.tenant).id
    period = _period(month)

    events = meter_events(usage_rows(engine, period, "tenant", (tenant_id,)), period)

    assert {e["event_name"]: e["payload"]["value"] for e in events} == {
        "metergate.requests": "4",
        "metergate.input_tokens": "40",
        "metergate.output_tokens": "6",
        "metergate.cost_usd": "1.87500000",
    }
    assert {e["payload"]["customer"] for e in events} == {f"tenant:{first.tenant}"}
    assert {e["timestamp"] for e in events} == {period.end.isoformat()}
    again = meter_events(usage_rows(engine, period, "tenant", (tenant_id,)), period)
    assert [e["identifier"] for e in again] == [e["identifier"] for e in events]
    assert len({e["identifier"] for e in events}) == len(events)


def test_an_end_user_export_covers_whole_days(engine: Engine, month: datetime) -> None:
    with pytest.raises(ValueError, match="whole UTC days"):
        usage_rows(engine, BillingPeriod(month, month + timedelta(hours=5)), "end_user")


def test_the_cli_writes_csv_and_meter_events(
    engine: Engine, db_url: str, month: datetime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, _ = _seed(engine, month)
    monkeypatch.setenv("METERGATE_DATABASE_URL", db_url)
    runner = CliRunner()
    label = f"{month.year:04d}-{month.month:02d}"

    as_csv = runner.invoke(
        main, ["usage", "export", "--month", label, "--by", "user", "--tenant", first.tenant]
    )
    out = tmp_path / "events.json"
    as_json = runner.invoke(
        main,
        ["usage", "export", "--month", label, "--by", "end_user", "--format", "json", "-o", out],
    )
    unknown = runner.invoke(main, ["usage", "export", "--month", label, "--tenant", "nope"])
    bad_month = runner.invoke(main, ["usage", "export", "--month", "2026-13"])

    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [(r["customer"], r["cost_usd"]) for r in rows] == [(f"user:{first.user}", "1.87500000")]
    assert rows[0]["period_start"] == month.isoformat()
    assert as_json.exit_code == 0, as_json.output
    events = json.loads(out.read_text())
    costs = {
        e["payload"]["customer"]: e["payload"]["value"]
        for e in events
        if e["event_name"] == "metergate.cost_usd"
    }
    assert costs == {
        f"end_user:{first.tenant}/alice": "0.75000000",
        f"end_user:{first.tenant}/bob": "0.12500000",
        f"end_user:{second.tenant}/alice": "2.00000000",
    }
    assert unknown.exit_code != 0 and "no such tenant: nope" in unknown.output
    assert bad_month.exit_code == 2 and "Traceback" not in bad_month.output


def test_csv_rows_keep_every_field(engine: Engine, month: datetime) -> None:
    first, _, _ = _seed(engine, month)
    period = _period(month)
    text = usage_csv(usage_rows(engine, period, "key"), period)
    header = next(csv.reader(io.StringIO(text)))
    assert header[:4] == ["period_start", "period_end", "subject", "customer"]
    assert "response_cache_saved_usd" in header
