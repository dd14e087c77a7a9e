"""Alert delivery to webhooks: each alert to each webhook once, however many evaluators run.

``alert_deliveries`` holds one row per (alert, webhook), keyed by a unique
``alert_key`` (``<alert key>@<webhook id>``). Exactly once rests on two
conditional writes, both atomic on PostgreSQL and SQLite:

1. **claim**: ``INSERT … ON CONFLICT DO NOTHING`` on the key. However many
   evaluators find the same alert, one row exists.
2. **lease**: before sending, an evaluator moves the row's ``next_attempt_at``
   past the send (``UPDATE … WHERE id = ? AND status = 'pending' AND
   next_attempt_at <= now``). Only the one whose update changed the row sends.

A delivery that fails (no answer, or not 2xx) stays pending with its error and a
backed-off ``next_attempt_at`` (``retry_base_seconds`` doubled per attempt, at most
an hour), and whichever evaluator runs after that time tries again; after
``max_attempts`` it is marked ``failed``. A process that dies mid-send leaves a lease
that expires after ``LEASE_SECONDS``, and the alert is sent again then: receivers that
must never see a duplicate can drop repeats by ``metergate.alert_key``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, Insert, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shared.alerts import Alert
from shared.models import AlertDelivery

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
TIMEOUT_SECONDS = 10.0
MAX_RETRY_SECONDS = 3600.0
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ALERT_DELIVERIES: Table = AlertDelivery.__table__  # type: ignore[assignment]


def webhook_id(url: str) -> str:
    """A short, stable name of a webhook URL (the URL may hold a secret token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


@dataclass(slots=True)
class DeliveryReport:
    claimed: int = 0
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # attempts that failed this run


def _insert(engine: Engine) -> Insert:
    table = ALERT_DELIVERIES
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["alert_key"])
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["alert_key"])
    raise NotImplementedError(f"unsupported database dialect {engine.dialect.name}")


def claim(engine: Engine, alerts: Sequence[Alert], urls: Sequence[str], now: datetime) -> int:
    """Record each (alert, webhook) not recorded yet; returns how many rows were new."""
    rows = [
        {
            "alert_key": f"{alert.key}@{webhook_id(url)}",
            "payload": alert.payload(),
            "status": PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for alert in alerts
        for url in urls
    ]
    if not rows:
        return 0
    with engine.begin() as connection:
        result = connection.execute(_insert(engine).returning(ALERT_DELIVERIES.c.id), rows).all()
    return len(result)


def deliver_due(
    engine: Engine,
    urls: Sequence[str],
    now: datetime,
    *,
    client: httpx.Client,
    max_attempts: int = 10,
    retry_base_seconds: float = 30.0,
) -> DeliveryReport:
    """Send every pending delivery that is due and not leased by another evaluator."""
    by_id = {webhook_id(url): url for url in urls}
    report = DeliveryReport()
    table = ALERT_DELIVERIES
    due = (
        select(table.c.id, table.c.alert_key, table.c.payload, table.c.attempts)
        .where(
            table.c.status == PENDING,
            or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now),
        )
        .order_by(table.c.id)
    )
    with engine.connect() as connection:
        rows = connection.execute(due).all()
    for row_id, alert_key, payload, attempts in rows:
        if not _lease(engine, row_id, attempts, now):
            continue  # another evaluator has it
        url = by_id.get(alert_key.rsplit("@", 1)[-1])
        error = "webhook no longer configured" if url is None else _post(client, url, payload)
        attempt = attempts + 1
        if error is None:
            _finish(engine, row_id, status=DELIVERED, delivered_at=now, last_error=None)
            report.delivered.append(alert_key)
            log.info("event=alert_delivered alert_key=%s attempt=%d", alert_key, attempt)
            continue
        report.failed.append(alert_key)
        retry_seconds = min(retry_base_seconds * 2 ** (attempt - 1), MAX_RETRY_SECONDS)
        gives_up = url is None or attempt >= max_attempts
        _finish(
            engine,
            row_id,
            status=FAILED if gives_up else PENDING,
            last_error=error[:2000],
            next_attempt_at=None if gives_up else now + timedelta(seconds=retry_seconds),
        )
        log.warning(
            "event=alert_delivery_failed alert_key=%s attempt=%d gives_up=%s error=%s",
            alert_key,
            attempt,
            gives_up,
            error[:200],
        )
    return report


def _lease(engine: Engine, row_id: int, attempts: int, now: datetime) -> bool:
    """Take the row for one send: true for exactly one of any evaluators racing for it."""
    table = ALERT_DELIVERIES
    with engine.begin() as connection:
        result = connection.execute(
            update(table)
            .where(
                table.c.id == row_id,
                table.c.status == PENDING,
                table.c.attempts == attempts,
                or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= now),
            )
            .values(
                attempts=attempts + 1,
                next_attempt_at=now + timedelta(seconds=LEASE_SECONDS),
            )
        )
    return result.rowcount == 1


def _finish(engine: Engine, row_id: int, **values: Any) -> None:
    table = ALERT_DELIVERIES
    with engine.begin() as connection:
        connection.execute(update(table).where(table.c.id == row_id).values(**values))


def _post(client: httpx.Client, url: str, payload: dict[str, Any]) -> str | None:
    """Post one alert; None when the webhook took it (2xx), else what went wrong."""
    try:
        response = client.post(url, json=payload, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    return f"HTTP {response.status_code}: {response.text[:500]}"
