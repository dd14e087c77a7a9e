"""``metergate console-user``: accounts for the console, created from a shell or a script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main as cli
from shared import console_users
from shared.console_users import Actor
from shared.db import make_engine, transaction


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    assert (
        CliRunner().invoke(cli, ["db", "upgrade"], env={"METERGATE_DATABASE_URL": url}).exit_code
        == 0
    )
    return {"METERGATE_DATABASE_URL": url}


def test_create_with_the_password_on_stdin_then_sign_in(env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["console-user", "create", "ada", "--role", "admin", "--password-stdin"],
        input="a long enough password\n",
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "created console user ada (admin)" in result.output
    engine = make_engine(env["METERGATE_DATABASE_URL"])
    try:
        with transaction(engine) as session:
            actor = console_users.authenticate(session, "ada", "a long enough password")
    finally:
        engine.dispose()
    assert actor == Actor("ada", "admin")
    listed = json.loads(runner.invoke(cli, ["console-user", "list", "--json"], env=env).stdout)
    assert listed == [{"name": "ada", "role": "admin", "password": True, "disabled": False}]


def test_create_prompts_for_the_password_twice(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli,
        ["console-user", "create", "bo", "--role", "viewer"],
        input="another long password\nanother long password\n",
        env=env,
    )
    assert result.exit_code == 0, result.output


def test_an_oidc_only_account_and_disabling(env: dict[str, str]) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli, ["console-user", "create", "cy@x.example", "--role", "support", "--oidc-only"], env=env
    )
    assert created.exit_code == 0, created.output
    assert runner.invoke(cli, ["console-user", "disable", "cy@x.example"], env=env).exit_code == 0
    listed = json.loads(runner.invoke(cli, ["console-user", "list", "--json"], env=env).stdout)
    assert listed == [
        {"name": "cy@x.example", "role": "support", "password": False, "disabled": True}
    ]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--role", "owner", "--oidc-only"], "", "Invalid value for '--role'"),
        (["--role", "admin", "--password-stdin"], "short\n", "at least 12 characters"),
        (["--role", "admin", "--password-stdin", "--oidc-only"], "", "exclude each other"),
    ],
)
def test_create_refusals(env: dict[str, str], args: list[str], stdin: str, message: str) -> None:
    result = CliRunner().invoke(cli, ["console-user", "create", "dee", *args], input=stdin, env=env)
    assert result.exit_code != 0
    assert message in result.output
