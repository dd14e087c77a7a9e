"""Shared test machinery: real databases, the simulator, a real proxy server."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis
from flask import Flask
from sqlalchemy import Engine, func, select
from werkzeug.serving import BaseWSGIServer, make_server

from proxy.app import AppState, create_app
from proxy.server import QuietRequestHandler
from shared import accounts
from shared.accounts import Limits
from shared.db import make_engine, transaction, upgrade
from shared.models import RequestBody, RequestRecord
from shared.settings import Settings

PG_ADMIN_DSN = os.environ.get(
    "METERGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_HOST = "127.0.0.1:5432"
# Test Redis databases: 9 for shared fixtures; helpers' own tests take 10-14.
REDIS_TEST_URL = os.environ.get("METERGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
PROVIDER_OPENAI_KEY = "sk-test-provider-openai-0123456789"
PROVIDER_ANTHROPIC_KEY = "sk-ant-test-provider-0123456789"

T = TypeVar("T")


def create_pg_database() -> str:
    """A fresh PostgreSQL database for this test session; returns its SQLAlchemy URL."""
    name = f"metergate_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@{PG_HOST}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def kill_idle_connection(pool: redis.ConnectionPool, redis_url: str) -> Any:
    """Take a connection from ``pool``, give it back idle, and have the Redis server
    close it (``CLIENT KILL``), as a server restart or idle timeout would. Returns it."""
    connection: Any = pool.get_connection()
    connection.send_command("CLIENT", "ID")
    client_id = connection.read_response()
    pool.release(connection)
    killer = redis.Redis.from_url(redis_url)
    try:
        assert killer.client_kill_filter(_id=client_id) == 1
    finally:
        killer.close()
    return connection


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@dataclass
class Accounts:
    tenant: str
    tier: str
    user: str
    key: str
    key_id: int


def seed_accounts(
    engine: Engine,
    *,
    label: str | None = None,
    limits: Limits | None = None,
    key_models: list[str] | None = None,
) -> Accounts:
    label = label or uuid.uuid4().hex[:8]
    with transaction(engine) as session:
        accounts.create_tenant(session, f"tenant-{label}")
        accounts.create_tier(session, f"tier-{label}", limits or Limits())
        accounts.create_user(
            session, f"user-{label}@example.com", f"tenant-{label}", f"tier-{label}"
        )
        row, secret = accounts.create_key(
            session, f"user-{label}@example.com", name="test", models=key_models
        )
    return Accounts(
        tenant=f"tenant-{label}",
        tier=f"tier-{label}",
        user=f"user-{label}@example.com",
        key=secret,
        key_id=row.id,
    )


class ProxyServer:
    """The real proxy app served over HTTP by a threaded WSGI server in this process."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler
        )
        self.port = self._server.server_port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> AppState:
        return self.app.extensions["metergate"]  # type: ignore[no-any-return]

    def start(self) -> ProxyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.state.close()

    def flush(self) -> None:
        assert self.state.writer.flush(30), "record writer did not drain"

    def record(self, record_id: str) -> tuple[RequestRecord, RequestBody | None]:
        """The record with this gateway id (or client request id), after a flush."""
        self.flush()
        from sqlalchemy.orm import Session

        with Session(self.state.engine) as session:
            row = session.scalar(
                select(RequestRecord).where(
                    (RequestRecord.id == record_id) | (RequestRecord.client_request_id == record_id)
                )
            )
            assert row is not None, f"no record for {record_id}"
            body = session.get(RequestBody, row.id)
            return row, body

    def record_count(self) -> int:
        self.flush()
        with self.state.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(RequestRecord)) or 0)


def settings_for(db_url: str, sim_base_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "data_dir": data_dir,
        "openai_api_key": PROVIDER_OPENAI_KEY,
        "openai_base_url": sim_base_url + "/v1",
        "anthropic_api_key": PROVIDER_ANTHROPIC_KEY,
        "anthropic_base_url": sim_base_url,
        "config_poll_seconds": 0.2,
        "record_flush_seconds": 0.05,
        "upstream_first_byte_timeout_seconds": 5.0,
        "upstream_read_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_proxy(settings: Settings) -> Iterator[ProxyServer]:
    upgrade(settings.effective_database_url)
    server = ProxyServer(create_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()


def engine_for_url(url: str) -> Engine:
    return make_engine(url)
