"""``metergate demo``: the embedded default seeded, traffic through the real SDKs into the
SQLite log, and a console account to see it with (README first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from proxy.cli import main
from proxy.demo import CONSOLE_ADMIN, CONSOLE_TENANT, console_accounts
from shared import console_users
from shared.db import engine_for
from shared.keys import hash_key
from shared.models import ApiKey, RequestRecord, User
from shared.settings import Settings


@pytest.fixture()
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("METERGATE_DATABASE_URL", "METERGATE_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METERGATE_DATA_DIR", str(tmp_path / "data"))
    return Settings()


def test_the_demo_fills_the_embedded_log_with_both_dialects(embedded: Settings) -> None:
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--port", "0", "--requests", "40"])

    assert result.exit_code == 0, result.output
    assert "demo key (user ada@acme.example): mg-" in result.output
    assert embedded.effective_database_url.startswith("sqlite")
    engine = engine_for(embedded)
    try:
        with Session(engine) as session:
            by_dialect = dict(
                session.execute(
                    select(RequestRecord.dialect, func.count()).group_by(RequestRecord.dialect)
                ).all()
            )
            refused = session.scalar(
                select(func.count()).select_from(RequestRecord).where(RequestRecord.status >= 400)
            )
    finally:
        engine.dispose()
    assert sum(by_dialect.values()) == 40  # every call recorded, the refused ones too
    assert by_dialect.get("openai") and by_dialect.get("anthropic")
    assert refused


def test_the_console_admin_gets_a_fresh_password_and_replays_bill_the_console(
    embedded: Settings,
) -> None:
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--port", "0", "--requests", "1"])
    assert result.exit_code == 0, result.output

    first_password, first_key = console_accounts(embedded)
    second_password, second_key = console_accounts(embedded)

    engine = engine_for(embedded)
    try:
        with Session(engine) as session:
            assert console_users.authenticate(session, CONSOLE_ADMIN, first_password) is None
            actor = console_users.authenticate(session, CONSOLE_ADMIN, second_password)
            assert actor is not None and actor.role == "admin"
            for key in (first_key, second_key):
                owner = session.scalars(
                    select(User).join(ApiKey).where(ApiKey.secret_hash == hash_key(key))
                ).one()
                assert owner.tenant.name == CONSOLE_TENANT
    finally:
        engine.dispose()
