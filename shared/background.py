"""The background job: alerts every ``alert_interval_seconds``; partitions and retention hourly.

Runs as ``metergate alerts run`` (``--once`` for one pass), which ``metergate serve
proxy`` starts beside gunicorn when alerts or retention are configured. Several of
them (one per host) may run: a lease row in ``deployment_settings`` lets one do the
work at a time, and the claims in ``alert_deliveries`` keep each alert to one
delivery per webhook even when two run at once. Nothing here is on the request path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Engine, Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from shared.alerts import SpikeRule, evaluate
from shared.models import DeploymentSetting
from shared.partitions import ensure_partitions
from shared.retention import apply_retention
from shared.settings import Settings
from shared.webhooks import DeliveryReport, claim, deliver_due

log = logging.getLogger(__name__)

LEASE_NAME = "background_job_lease"
UPKEEP_EVERY = timedelta(hours=1)


@dataclass(slots=True)
class AlertRun:
    alerts: int = 0  # lines crossed (already sent ones included)
    claimed: int = 0  # (alert, webhook) deliveries new this run
    report: DeliveryReport = field(default_factory=DeliveryReport)


def run_alerts(engine: Engine, settings: Settings, now: datetime, client: httpx.Client) -> AlertRun:
    """Find what has crossed a line, claim each delivery once, send what is due."""
    urls = settings.alert_webhook_urls
    if not urls:
        return AlertRun()
    spike = SpikeRule(
        factor=settings.alert_spike_factor,
        min_usd=settings.alert_spike_min_usd,
        baseline_days=settings.alert_spike_baseline_days,
    )
    alerts = evaluate(engine, now, settings.alert_thresholds_percent, spike)
    claimed = claim(engine, alerts, urls, now)
    report = deliver_due(
        engine,
        urls,
        now,
        client=client,
        max_attempts=settings.alert_max_attempts,
        retry_base_seconds=settings.alert_retry_base_seconds,
    )
    return AlertRun(alerts=len(alerts), claimed=claimed, report=report)


def take_lease(engine: Engine, holder: str, seconds: float, now: datetime) -> bool:
    """Hold the background job for ``seconds`` unless another holder's lease is live.
    Atomic on both databases: of evaluators racing, one gets it."""
    table: Table = DeploymentSetting.__table__  # type: ignore[assignment]
    row = {"name": LEASE_NAME, "value": "", "updated_at": now - timedelta(days=1)}
    insert = (
        postgresql.insert(table) if engine.dialect.name == "postgresql" else sqlite.insert(table)
    )
    with engine.begin() as connection:
        connection.execute(insert.values(row).on_conflict_do_nothing(index_elements=["name"]))
        result = connection.execute(
            update(table)
            .where(
                table.c.name == LEASE_NAME,
                (table.c.value == holder)
                | (table.c.updated_at <= now - timedelta(seconds=seconds)),
            )
            .values(value=holder, updated_at=now)
        )
    return result.rowcount == 1


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class BackgroundJob:
    """The loop behind ``metergate alerts run``; ``stop`` ends it between passes."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._stop = threading.Event()
        self._holder = holder_name()
        self._last_upkeep: datetime | None = None

    def stop(self) -> None:
        self._stop.set()

    def run_once(self, client: httpx.Client, now: datetime | None = None) -> AlertRun:
        now = now or datetime.now(UTC)
        if self._last_upkeep is None or now - self._last_upkeep >= UPKEEP_EVERY:
            self._upkeep(now)
            self._last_upkeep = now
        run = run_alerts(self._engine, self._settings, now, client)
        if run.claimed or run.report.delivered or run.report.failed:
            log.info(
                "event=alerts_evaluated alerts=%d claimed=%d delivered=%d failed=%d",
                run.alerts,
                run.claimed,
                len(run.report.delivered),
                len(run.report.failed),
            )
        return run

    def _upkeep(self, now: datetime) -> None:
        """Hourly: the request log's partitions ahead, then retention."""
        ensure_partitions(self._engine, now)
        settings = self._settings
        if settings.retention_bodies_days is None and settings.retention_records_days is None:
            return
        apply_retention(
            self._engine,
            now,
            bodies_days=settings.retention_bodies_days,
            records_days=settings.retention_records_days,
            batch_size=settings.retention_batch_size,
        )

    def run_forever(self, *, parent_pid: int | None = None) -> None:
        """Loop until ``stop``, or until ``parent_pid`` (the server that started this
        process) is gone, so a killed server leaves no job behind."""
        interval = self._settings.alert_interval_seconds
        with httpx.Client() as client:
            while not self._stop.is_set():
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.info("event=background_job_orphaned parent_pid=%d", parent_pid)
                    return
                now = datetime.now(UTC)
                try:
                    if take_lease(self._engine, self._holder, interval * 3, now):
                        self.run_once(client, now)
                except SQLAlchemyError:  # the loop outlives a database outage; tried again
                    log.exception("event=background_job_failed")
                self._stop.wait(interval)
