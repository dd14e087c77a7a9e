"""The reliability tests' own world: a PostgreSQL database, Redis servers and a simulator
of their own, and ``metergate serve proxy`` (gunicorn, two workers) on them.

The gunicorn proxy reaches PostgreSQL through a TCP relay the tests can cut, and Redis
on a private ``redis-server`` they can stop, freeze and restart; nothing shared with
other test runs is ever touched. Its provider keys are distinctive strings, so the
secrets test can look for them in everything the system wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from proxy.simulator import SimulatorThread
from shared.db import make_engine, upgrade
from shared.models import RequestRecord
from tests.relay import TcpRelay
from tests.reliability.services import GunicornProxy, RedisServer
from tests.support import (
    PG_HOST,
    ProxyServer,
    create_pg_database,
    drop_pg_database,
    running_proxy,
    settings_for,
)

# Distinctive secrets: the secrets test looks for them in everything the system wrote.
OPENAI_SECRET = "sk-proj-MGRELopenaiProviderSecret7f3a9c1d2e4b6a8c0e2f4a6b8d"
ANTHROPIC_SECRET = "sk-ant-api03-MGRELanthropicProviderSecret9b8a7c6d5e4f3a2b1c"
ADMIN_SECRET = "mgadmin-MGRELadminTokenSecret-0123456789abcdef0123456789"
RESERVATION_TTL_SECONDS = 3.0
BODY_READ_TIMEOUT_SECONDS = 2.0
UPSTREAM_TIMEOUT_SECONDS = 1.5


@dataclass
class Stack:
    """gunicorn + PostgreSQL (through a relay) + a private Redis + the simulator."""

    proxy: GunicornProxy
    redis: RedisServer
    relay: TcpRelay
    simulator: SimulatorThread
    db_url: str  # direct, not through the relay: what the tests read with
    engine: Engine
    data_dir: Path

    @property
    def base_url(self) -> str:
        return self.proxy.base_url

    def spool_files(self) -> list[Path]:
        return sorted((self.data_dir / "spool").glob("*.jsonl*"))


def proxy_env(**values: str) -> dict[str, str]:
    """This process's environment without any metergate or provider setting, plus ``values``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("METERGATE_", "OPENAI_", "ANTHROPIC_"))
    }
    env.update(values)
    return env


@pytest.fixture(scope="package")
def rel_db_url() -> Iterator[str]:
    """A PostgreSQL database of these tests alone (records are counted per database)."""
    url = create_pg_database()
    upgrade(url)
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="package")
def rel_engine(rel_db_url: str) -> Iterator[Engine]:
    engine = make_engine(rel_db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="package")
def rel_simulator() -> Iterator[SimulatorThread]:
    """A simulator of these tests alone: its in-flight count and config are theirs."""
    with SimulatorThread() as simulator:
        yield simulator


@pytest.fixture(scope="package")
def stack(
    rel_db_url: str,
    rel_engine: Engine,
    rel_simulator: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("gunicorn-data")
    redis_server = RedisServer().start()
    pg_host, pg_port = PG_HOST.split(":")
    relay = TcpRelay(pg_host, int(pg_port)).start()
    db_via_relay = rel_db_url.replace(PG_HOST, f"127.0.0.1:{relay.port}").replace(
        "postgresql+psycopg://", "postgresql://"
    )
    env = proxy_env(
        METERGATE_DATABASE_URL=db_via_relay,
        METERGATE_REDIS_URL=redis_server.url,
        METERGATE_DATA_DIR=str(data_dir),
        METERGATE_LOG_LEVEL="DEBUG",
        METERGATE_ADMIN_TOKEN=ADMIN_SECRET,
        METERGATE_RECORD_FLUSH_SECONDS="0.05",
        METERGATE_CONFIG_POLL_SECONDS="0.2",
        METERGATE_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS=str(UPSTREAM_TIMEOUT_SECONDS),
        METERGATE_UPSTREAM_READ_TIMEOUT_SECONDS=str(UPSTREAM_TIMEOUT_SECONDS),
        METERGATE_UPSTREAM_DEADLINE_SECONDS="10",
        METERGATE_RETRY_MAX_ATTEMPTS="1",
        METERGATE_BREAKER_FAILURE_THRESHOLD="1000000",
        METERGATE_RESERVATION_TTL_SECONDS=str(RESERVATION_TTL_SECONDS),
        METERGATE_BODY_READ_TIMEOUT_SECONDS=str(BODY_READ_TIMEOUT_SECONDS),
        OPENAI_API_KEY=OPENAI_SECRET,
        OPENAI_BASE_URL=rel_simulator.base_url + "/v1",
        ANTHROPIC_API_KEY=ANTHROPIC_SECRET,
        ANTHROPIC_BASE_URL=rel_simulator.base_url,
    )
    proxy = GunicornProxy(env, data_dir / "gunicorn.log")
    try:
        proxy.start()
        yield Stack(proxy, redis_server, relay, rel_simulator, rel_db_url, rel_engine, data_dir)
    finally:
        status = proxy.stop()
        relay.stop()
        redis_server.stop()
        assert status == 0, proxy.log_tail()


@pytest.fixture(scope="package")
def inproc_redis() -> Iterator[RedisServer]:
    """A private Redis for the in-process proxies (the stack's gets stopped and restarted)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def inproc(
    rel_db_url: str,
    rel_simulator: SimulatorThread,
    inproc_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    """The proxy in this process (werkzeug, threaded) on the same database, with Redis."""
    settings = settings_for(
        rel_db_url,
        rel_simulator.base_url,
        Path(tmp_path_factory.mktemp("inproc-data")),
        redis_url=inproc_redis.url,
        openai_api_key=OPENAI_SECRET,
        anthropic_api_key=ANTHROPIC_SECRET,
        admin_token=ADMIN_SECRET,
        body_read_timeout_seconds=BODY_READ_TIMEOUT_SECONDS,
        retry_max_attempts=1,
    )
    with running_proxy(settings) as server:
        yield server


def record_counts(engine: Engine, request_ids: list[str]) -> dict[str, int]:
    """How many records each client request id has (ids without any are left out)."""
    counts: dict[str, int] = {}
    for start in range(0, len(request_ids), 500):
        chunk = request_ids[start : start + 500]
        with engine.connect() as connection:
            rows = connection.execute(
                select(RequestRecord.client_request_id, func.count())
                .where(RequestRecord.client_request_id.in_(chunk))
                .group_by(RequestRecord.client_request_id)
            ).all()
        counts.update({str(row[0]): int(row[1]) for row in rows})
    return counts


def records_by_client_id(engine: Engine, request_ids: list[str]) -> dict[str, Any]:
    """The one record of each client request id (asserting there is exactly one)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(RequestRecord).where(RequestRecord.client_request_id.in_(request_ids))
        ).all()
    found: dict[str, Any] = {}
    for row in rows:
        assert row.client_request_id not in found, f"two records for {row.client_request_id}"
        found[row.client_request_id] = row
    return found
