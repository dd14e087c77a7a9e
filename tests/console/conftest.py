"""Console fixtures: a migrated PostgreSQL database the console reads, and signed-in apps.

``console_app(role)`` returns an ``AppTest`` of the whole console (the entry script,
with its sign-in gate and navigation) already signed in as a fresh console user
with that role; switch to a page with ``at.switch_page("app_pages/NAME.py").run()``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from console.auth import SESSION_KEY, SignIn
from proxy.simulator import SimulatorThread
from shared import console_users
from shared.console_users import Actor
from shared.db import make_engine, transaction, upgrade
from tests.support import ProxyServer, running_proxy, settings_for

APP = Path(__file__).resolve().parents[2] / "console" / "streamlit_app.py"
APP_TIMEOUT_SECONDS = 30.0
TEST_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def console_db(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def console_engine(console_db: str) -> Iterator[Engine]:
    engine = make_engine(console_db)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture()
def console_env(console_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the console (run in this process by AppTest) at the test database."""
    monkeypatch.setenv("METERGATE_DATABASE_URL", console_db)
    monkeypatch.delenv("METERGATE_CONSOLE_OIDC", raising=False)
    return console_db


def make_console_user(engine: Engine, role: str, password: str = TEST_PASSWORD) -> Actor:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    with transaction(engine) as session:
        console_users.create_console_user(session, name, role, password)
    return Actor(name, role)


@pytest.fixture()
def console_app(console_env: str, console_engine: Engine) -> Callable[[str], tuple[AppTest, Actor]]:
    def signed_in(role: str) -> tuple[AppTest, Actor]:
        st.cache_data.clear()  # rows seeded by the test must show, not a previous test's
        actor = make_console_user(console_engine, role)
        at = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_SECONDS)
        at.session_state[SESSION_KEY] = SignIn(actor.name, "password", time.time())
        at.run()
        assert not at.exception, at.exception
        return at, actor

    return signed_in


@pytest.fixture(scope="session")
def console_proxy(
    console_db: str, simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    """A real proxy on the console's database: what admins change must reach it."""
    data_dir = Path(tmp_path_factory.mktemp("console-proxy"))
    with running_proxy(settings_for(console_db, simulator.base_url, data_dir)) as server:
        yield server
