"""Budget and spike alerts reach a real webhook exactly once, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from proxy.cli import main
from shared import accounts
from shared.accounts import Limits
from shared.background import BackgroundJob, run_alerts, take_lease
from shared.db import make_engine, transaction, upgrade
from shared.models import AlertDelivery
from shared.records import write_records
from shared.settings import Settings
from tests.shared.usage_records import call
from tests.shared.webhook_receiver import WebhookReceiver
from tests.support import create_pg_database, drop_pg_database


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def alerts_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    """A database of this module's own: alerts read global spend and the global cap."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('alerts')) / 'alerts.sqlite3'}"
    else:
        url = create_pg_database()
    upgrade(url)
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        if request.param == "postgresql":
            drop_pg_database(url)


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        yield http


def settings(url: str, receiver: WebhookReceiver, **values: object) -> Settings:
    """Alert settings for ``receiver``; spikes only where a test asks for them."""
    values = {"alert_spike_min_usd": 1e9, **values}
    return Settings(
        database_url=url,
        alert_webhook_urls=[receiver.url],
        **values,  # type: ignore[arg-type]
    )


def owner(engine: Engine, user_usd: str, tenant_usd: str | None = None) -> tuple[int, int, int]:
    """A tenant, a user whose tier gives it ``user_usd`` a month, and a key: their ids."""
    label = uuid.uuid4().hex[:8]
    with transaction(engine) as session:
        tenant = accounts.create_tenant(
            session, f"t-{label}", Decimal(tenant_usd) if tenant_usd else None
        )
        accounts.create_tier(session, f"tier-{label}", Limits(monthly_usd=Decimal(user_usd)))
        user = accounts.create_user(
            session, f"u-{label}@example.com", f"t-{label}", f"tier-{label}"
        )
        key, _ = accounts.create_key(session, f"u-{label}@example.com", name="k")
        session.flush()
        return tenant.id, user.id, key.id


def spend(engine: Engine, ids: tuple[int, int, int], at: datetime, usd: str) -> None:
    tenant_id, user_id, key_id = ids
    write_records(
        engine,
        [call(at, tenant_id=tenant_id, user_id=user_id, key_id=key_id, cost_usd=Decimal(usd))],
    )


def test_each_budget_threshold_is_delivered_once_across_repeated_evaluations(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    ids = owner(engine, user_usd="10", tenant_usd="40")
    tenant_id, user_id, _ = ids
    with WebhookReceiver() as receiver:
        config = settings(url, receiver)
        spend(engine, ids, now - timedelta(days=2), "6")  # user at 60 %, tenant at 15 %
        for _ in range(3):
            run_alerts(engine, config, now, client)
        assert receiver.accepted_keys() == Counter({f"budget:user:{user_id}:2026-03:50": 1})

        spend(engine, ids, now, "3")  # user at 90 %
        spend(engine, ids, now, "2.5")  # user at 115 %, tenant at 28.75 %
        for minutes in range(3):
            run_alerts(engine, config, now + timedelta(minutes=minutes), client)
        spend(engine, ids, now + timedelta(hours=1), "10")  # tenant at 53.75 %
        run_alerts(engine, config, now + timedelta(hours=1), client)
        run_alerts(engine, config, now + timedelta(hours=2), client)

    assert receiver.accepted_keys() == Counter(
        {
            f"budget:user:{user_id}:2026-03:50": 1,
            f"budget:user:{user_id}:2026-03:80": 1,
            f"budget:user:{user_id}:2026-03:100": 1,
            f"budget:tenant:{tenant_id}:2026-03:50": 1,
        }
    )
    body = next(b for b in receiver.accepted if b["metergate"]["threshold_percent"] == 100)
    assert "$11.50 of its $10.00 monthly budget" in body["text"]
    assert body["blocks"][0]["text"]["text"] == body["text"]
    assert body["metergate"] | {"scope_name": "-"} == {
        "alert_key": f"budget:user:{user_id}:2026-03:100",
        "kind": "budget",
        "scope": "user",
        "scope_id": user_id,
        "scope_name": "-",
        "period": "2026-03",
        "spent_usd": "11.50000000",
        "limit_usd": "10.00000000",
        "threshold_percent": 100,
        "baseline_hourly_usd": None,
    }


def test_a_new_month_sends_its_thresholds_again_and_the_global_cap_has_its_own(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    ids = owner(engine, user_usd="1000")
    april, may = datetime(2026, 4, 20, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)
    with transaction(engine) as session:
        accounts.set_global_monthly_usd(session, Decimal(20))
    try:
        with WebhookReceiver() as receiver:
            config = settings(url, receiver, alert_thresholds_percent=[50, 90])
            spend(engine, ids, april, "12")
            run_alerts(engine, config, april, client)
            run_alerts(engine, config, april, client)
            spend(engine, ids, may, "19")
            run_alerts(engine, config, may, client)
            run_alerts(engine, config, may + timedelta(days=1), client)
    finally:
        with transaction(engine) as session:
            accounts.set_global_monthly_usd(session, None)
    assert receiver.accepted_keys() == Counter(
        {
            "budget:global:-:2026-04:50": 1,
            "budget:global:-:2026-05:50": 1,
            "budget:global:-:2026-05:90": 1,
        }
    )


def test_two_concurrent_evaluators_deliver_each_threshold_once(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    now = datetime(2026, 6, 15, 9, tzinfo=UTC)
    users = [owner(engine, user_usd="4") for _ in range(5)]
    for ids in users:
        spend(engine, ids, now, "4.2")  # every user past 50, 80 and 100 %
    with WebhookReceiver() as receiver:
        config = settings(url, receiver)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def evaluator() -> None:
            try:
                with httpx.Client() as http:
                    start.wait(10)
                    for second in range(5):
                        run_alerts(engine, config, now + timedelta(seconds=second), http)
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        threads = [threading.Thread(target=evaluator) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors
    expected = {
        f"budget:user:{user_id}:2026-06:{percent}"
        for _, user_id, _ in users
        for percent in (50, 80, 100)
    }
    assert receiver.posted_keys() == Counter(dict.fromkeys(expected, 1))


def test_a_failing_webhook_gets_the_alert_after_backed_off_retries_once(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    now = datetime(2026, 7, 3, 8, tzinfo=UTC)
    ids = owner(engine, user_usd="10")
    spend(engine, ids, now, "5")
    key = f"budget:user:{ids[1]}:2026-07:50"
    with WebhookReceiver(fail_first=2) as receiver:
        config = settings(url, receiver, alert_retry_base_seconds=10.0)
        first = run_alerts(engine, config, now, client)
        assert first.claimed == 1 and first.report.failed
        # Not due again before the backoff: 10 s after the first failure, 20 s after the second.
        assert not run_alerts(engine, config, now + timedelta(seconds=5), client).report.failed
        assert run_alerts(engine, config, now + timedelta(seconds=10), client).report.failed
        assert not run_alerts(engine, config, now + timedelta(seconds=25), client).report.failed
        third = run_alerts(engine, config, now + timedelta(seconds=30), client)
        assert [k.split("@")[0] for k in third.report.delivered] == [key]
        for seconds in (40, 100, 1000):
            run_alerts(engine, config, now + timedelta(seconds=seconds), client)
    assert receiver.posted_keys() == Counter({key: 3})
    assert receiver.accepted_keys() == Counter({key: 1})
    with engine.connect() as connection:
        row = connection.execute(
            select(AlertDelivery.status, AlertDelivery.attempts, AlertDelivery.last_error).where(
                AlertDelivery.alert_key.startswith(key + "@")
            )
        ).one()
    assert tuple(row) == ("delivered", 3, None)


def test_a_webhook_that_never_answers_is_given_up_after_max_attempts(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    now = datetime(2026, 8, 3, 8, tzinfo=UTC)
    ids = owner(engine, user_usd="10")
    spend(engine, ids, now, "5")
    with WebhookReceiver(fail_first=100) as receiver:
        config = settings(url, receiver, alert_retry_base_seconds=0.0, alert_max_attempts=3)
        for seconds in range(6):
            run_alerts(engine, config, now + timedelta(seconds=seconds), client)
    assert receiver.posted_keys() == Counter({f"budget:user:{ids[1]}:2026-08:50": 3})
    with engine.connect() as connection:
        status, error = connection.execute(
            select(AlertDelivery.status, AlertDelivery.last_error).where(
                AlertDelivery.alert_key.startswith(f"budget:user:{ids[1]}:2026-08:50@")
            )
        ).one()
    assert status == "failed" and error.startswith("HTTP 500")


def test_a_spend_spike_fires_once_per_scope_and_hour(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    hour = datetime(2026, 9, 20, 14, tzinfo=UTC)
    ids = owner(engine, user_usd="100000")
    tenant_id = ids[0]
    # The week before today at $24 a day ($1 an hour); today's earlier hours are not in the
    # baseline. Then $2.5 in the hour: under 3x the baseline, no spike.
    for days_back in range(1, 8):
        spend(engine, ids, hour - timedelta(days=days_back), "24")
    spend(engine, ids, hour.replace(hour=3), "5")
    spend(engine, ids, hour - timedelta(days=8), "1000")  # before the baseline's days
    with WebhookReceiver() as receiver:
        config = settings(
            url,
            receiver,
            alert_spike_factor=3.0,
            alert_spike_min_usd=2.0,
            alert_thresholds_percent=[100],
        )
        spend(engine, ids, hour + timedelta(minutes=5), "2.5")
        run_alerts(engine, config, hour + timedelta(minutes=10), client)
        assert receiver.accepted_keys() == Counter()
        spend(engine, ids, hour + timedelta(minutes=20), "1")  # $3.5 this hour: a spike
        for minutes in (21, 30, 59):
            run_alerts(engine, config, hour + timedelta(minutes=minutes), client)
        spend(engine, ids, hour + timedelta(minutes=65), "0.5")  # the next hour is calm
        run_alerts(engine, config, hour + timedelta(minutes=70), client)
    assert receiver.accepted_keys() == Counter(
        {"spike:global:-:2026-09-20T14": 1, f"spike:tenant:{tenant_id}:2026-09-20T14": 1}
    )
    body = receiver.accepted[0]["metergate"]
    assert body["kind"] == "spike" and body["spent_usd"] == "3.50000000"
    assert Decimal(body["baseline_hourly_usd"]) == Decimal(1)


def test_one_evaluator_holds_the_background_lease_at_a_time(
    alerts_db: tuple[str, Engine], client: httpx.Client
) -> None:
    url, engine = alerts_db
    now = datetime(2026, 10, 1, tzinfo=UTC)
    assert take_lease(engine, "host-a:1", 180, now)
    assert not take_lease(engine, "host-b:2", 180, now + timedelta(seconds=60))
    assert take_lease(engine, "host-a:1", 180, now + timedelta(seconds=60))  # renewed
    assert take_lease(engine, "host-b:2", 180, now + timedelta(seconds=241))  # a lapsed lease
    with WebhookReceiver() as receiver:
        job = BackgroundJob(engine, settings(url, receiver))
        run = job.run_once(client, now)
    assert run.alerts == 0 and receiver.posts == []


def test_the_alerts_command_makes_one_pass(alerts_db: tuple[str, Engine]) -> None:
    url, engine = alerts_db
    now = datetime.now(UTC)
    ids = owner(engine, user_usd="2")
    spend(engine, ids, now, "2")
    with WebhookReceiver() as receiver:
        env = {
            "METERGATE_DATABASE_URL": url,
            "METERGATE_ALERT_WEBHOOK_URLS": receiver.url,
            "METERGATE_ALERT_SPIKE_MIN_USD": "1000000000",
        }
        result = CliRunner().invoke(main, ["alerts", "run", "--once"], env=env)
        assert result.exit_code == 0, result.output
        again = CliRunner().invoke(main, ["alerts", "run", "--once"], env=env)
    month = f"{now.year:04d}-{now.month:02d}"
    assert receiver.accepted_keys() == Counter(
        {f"budget:user:{ids[1]}:{month}:{percent}": 1 for percent in (50, 80, 100)}
    )
    assert "3 new, 3 delivered, 0 failed" in result.output
    assert "0 new, 0 delivered" in again.output
