"""Fixtures: real PostgreSQL and SQLite databases, the simulator, a real proxy server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.simulator import SimulatorThread
from tests.support import (
    REDIS_TEST_URL,
    Accounts,
    ProxyServer,
    create_pg_database,
    drop_pg_database,
    running_proxy,
    seed_accounts,
    settings_for,
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'metergate.sqlite3'}"


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both databases."""
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of the tests' own, emptied before and after."""
    url = REDIS_TEST_URL
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorThread]:
    sim = SimulatorThread().start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def proxy(
    db_url: str, simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    """A proxy on each database, shared by the tests of a session."""
    data_dir = tmp_path_factory.mktemp("proxy-data")
    with running_proxy(settings_for(db_url, simulator.base_url, Path(data_dir))) as server:
        yield server


@pytest.fixture()
def acct(proxy: ProxyServer) -> Accounts:
    """A fresh tenant / tier / user / key on the running proxy's database."""
    return seed_accounts(proxy.state.engine)
