"""The ``metergate`` CLI: help everywhere, and create / list --json round trips on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from proxy.cli import main as cli


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


ALL_COMMANDS = list(command_paths(cli))


class Metergate:
    """Runs CLI commands in-process against one SQLite file."""

    def __init__(self, database_url: str) -> None:
        self.runner = CliRunner()
        self.env = {"METERGATE_DATABASE_URL": database_url}

    def __call__(self, *args: str) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    def fails(self, *args: str) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        assert result.exit_code != 0, (args, result.output)
        return result

    def listed(self, noun: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self(noun, "list", "--json").stdout)
        return rows


@pytest.fixture(scope="module")
def metergate(tmp_path_factory: pytest.TempPathFactory) -> Metergate:
    database = Path(tmp_path_factory.mktemp("cli")) / "cli.sqlite3"
    run = Metergate(f"sqlite:///{database}")
    run("db", "upgrade")
    return run


def test_top_level_help_lists_every_command_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("db", "tenant", "tier", "user", "key", "model", "serve", "simulator", "demo"):
        assert name in result.stdout


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=[" ".join(path) for path in ALL_COMMANDS])
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert " ".join(path) in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    "path",
    [path for path in ALL_COMMANDS if path[-1] == "list"],
    ids=lambda path: " ".join(path),
)
def test_every_list_command_takes_json(path: tuple[str, ...]) -> None:
    assert "--json" in CliRunner().invoke(cli, [*path, "--help"]).stdout


def test_tenant_create_then_list_json(metergate: Metergate) -> None:
    metergate("tenant", "create", "acme", "--monthly-usd", "100.50")
    (row,) = [row for row in metergate.listed("tenant") if row["name"] == "acme"]
    assert Decimal(row["monthly_usd"]) == Decimal("100.50")
    assert isinstance(row["id"], int)


def test_tier_create_update_then_list_json(metergate: Metergate) -> None:
    metergate(
        "tier",
        "create",
        "gold",
        "--rpm",
        "60",
        "--tpm",
        "10000",
        "--monthly-tokens",
        "500000",
        "--monthly-usd",
        "25.5",
        "--max-tokens",
        "512",
        "--cache-ttl",
        "300",
        "--models",
        "gpt-4o-mini, claude-haiku-4-5",
    )
    metergate("tier", "update", "gold", "--rpm", "120")
    (row,) = [row for row in metergate.listed("tier") if row["name"] == "gold"]
    assert (row["rpm"], row["tpm"], row["monthly_tokens"]) == (120, 10000, 500000)
    assert (row["max_tokens"], row["cache_ttl_seconds"]) == (512, 300)
    assert Decimal(row["monthly_usd"]) == Decimal("25.5")
    assert row["models"] == ["gpt-4o-mini", "claude-haiku-4-5"]


def test_user_create_then_list_json(metergate: Metergate) -> None:
    metergate("tenant", "create", "users-co")
    metergate("tier", "create", "users-tier")
    metergate("user", "create", "ada@example.com", "--tenant", "users-co", "--tier", "users-tier")
    (row,) = [row for row in metergate.listed("user") if row["email"] == "ada@example.com"]
    assert (row["tenant"], row["tier"]) == ("users-co", "users-tier")


def test_key_create_prints_only_the_secret_and_key_list_never_shows_it(
    metergate: Metergate,
) -> None:
    metergate("tenant", "create", "keys-co")
    metergate("tier", "create", "keys-tier")
    metergate("user", "create", "kim@example.com", "--tenant", "keys-co", "--tier", "keys-tier")
    created = metergate(
        "key",
        "create",
        "--user",
        "kim@example.com",
        "--name",
        "ci",
        "--env",
        "staging",
        "--models",
        "gpt-4o-mini",
        "--expires-in-days",
        "7",
    )
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n", "stdout must hold the secret and nothing else"
    assert secret.startswith("mg-") and " " not in secret
    assert secret not in created.stderr

    listing = metergate("key", "list", "--json").stdout
    assert secret not in listing and secret[11:] not in listing
    (row,) = [row for row in json.loads(listing) if row["user"] == "kim@example.com"]
    assert row["prefix"] == secret[:11]
    assert (row["name"], row["env"], row["models"]) == ("ci", "staging", ["gpt-4o-mini"])
    assert row["expires_at"] and row["revoked_at"] is None

    metergate("key", "revoke", row["prefix"])
    (revoked,) = [row for row in metergate.listed("key") if row["user"] == "kim@example.com"]
    assert revoked["revoked_at"]


def test_model_add_then_list_json(metergate: Metergate) -> None:
    metergate(
        "model",
        "add",
        "house-mini",
        "--provider",
        "openai",
        "--upstream-model",
        "gpt-4o-mini",
        "--input-per-mtok",
        "1.5",
        "--output-per-mtok",
        "6",
        "--cached-input-per-mtok",
        "0.75",
    )
    models = {row["name"]: row for row in metergate.listed("model")}
    added = models["house-mini"]
    assert (added["provider"], added["upstream_model"]) == ("openai", "gpt-4o-mini")
    prices = {name: Decimal(added[name]) for name in added if name.endswith("_per_mtok")}
    assert prices == {
        "input_per_mtok": Decimal("1.5"),
        "cached_input_per_mtok": Decimal("0.75"),
        "cache_write_per_mtok": Decimal("1.5"),  # unset: the input price
        "output_per_mtok": Decimal("6"),
    }
    assert {"gpt-4o", "claude-sonnet-4-5"} <= set(models), "db upgrade seeds the catalogue"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tenant", "create", "dup-co"), "already exists"),
        (("user", "create", "x@example.com", "--tenant", "nope", "--tier", "nope"), "no tenant"),
        (("key", "create", "--user", "nobody@example.com"), "no user"),
        (("key", "revoke", "mg-unknown"), "no key"),
        (("tier", "create", "bad", "--rpm", "-1"), "-1"),
        (("model", "add", "m", "--provider", "mistral"), "mistral"),
    ],
)
def test_invalid_commands_fail_with_a_message_and_print_nothing_on_stdout(
    metergate: Metergate, args: tuple[str, ...], message: str
) -> None:
    if args[:2] == ("tenant", "create"):
        metergate.runner.invoke(cli, list(args), env=metergate.env)  # the first one may pass
    result = metergate.fails(*args)
    assert message in result.stderr
    assert result.stdout == ""
