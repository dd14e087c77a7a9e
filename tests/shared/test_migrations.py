"""Migrations build the schema the models describe, on SQLite and on a fresh PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from shared.db import alembic_config, make_engine, upgrade
from shared.models import Base
from shared.partitions import include_in_autogenerate
from tests.support import create_pg_database, drop_pg_database


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database no other test touches, upgraded from empty to head once."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('migrations') / 'fresh.sqlite3'}"
        upgrade(url)
        yield url
        return
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


def schema_diff(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": False,
                    "include_name": include_in_autogenerate,  # search index (0004), partitions
                },
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_migrations_upgrade_an_empty_database_to_head_and_match_the_models(
    migrated_url: str,
) -> None:
    assert schema_diff(migrated_url) == []


def test_migrated_database_is_at_the_single_head_revision(migrated_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(migrated_url))
    assert len(script.get_heads()) == 1, "migrations have branched"
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert current == script.get_current_head()
    assert set(Base.metadata.tables) <= tables


def test_upgrading_again_changes_nothing(migrated_url: str) -> None:
    upgrade(migrated_url)
    assert schema_diff(migrated_url) == []
