"""Fixtures of the shared package's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from shared.db import make_engine, upgrade


@pytest.fixture(scope="module")
def records_engine(db_url: str) -> Iterator[Engine]:
    """A migrated database for tests that write records (each runs on both databases)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def engine(records_engine: Engine) -> Engine:
    """The migrated database of this module's tests (on PostgreSQL and on SQLite)."""
    return records_engine
