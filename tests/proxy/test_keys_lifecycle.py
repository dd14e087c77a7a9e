"""A key's life on running proxies: created by the CLI, used, expired, revoked within 5 s.

The proxy here polls for config changes at the shipped default interval, so the 5-second
promise is measured as deployed, on two proxy processes' worth of caches at once.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner

from proxy.cli import main as cli
from shared import accounts
from shared.db import transaction
from shared.models import ApiKey
from shared.settings import Settings
from tests.support import (
    Accounts,
    ProxyServer,
    seed_accounts,
    wait_for,
)

REVOCATION_SECONDS = 5.0
METERGATE = Path(sys.executable).with_name("metergate")
DEFAULT_POLL_SECONDS = Settings.model_fields["config_poll_seconds"].default


@pytest.fixture()
def both(proxy: ProxyServer, edge_proxy: ProxyServer) -> list[ProxyServer]:
    """Two proxies on one database; the second polls for changes at the default interval."""
    assert edge_proxy.state.settings.config_poll_seconds == DEFAULT_POLL_SECONDS
    return [proxy, edge_proxy]


def status_on(server: ProxyServer, key: str, tls: ssl.SSLContext) -> tuple[int, str | None]:
    """(status, error code) of an authenticated call that needs no upstream."""
    with httpx2.Client(base_url=server.base_url, timeout=10, verify=tls) as client:
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    code = response.json()["error"]["code"] if response.status_code != 200 else None
    return response.status_code, code


def wait_until_refused(
    servers: list[ProxyServer], key: str, tls: ssl.SSLContext, started: float
) -> float:
    """Seconds from ``started`` until every server refuses ``key`` (fails past 2x the promise)."""
    refused: dict[int, float] = {}

    def all_refuse() -> bool:
        for server in servers:
            if server.port not in refused and status_on(server, key, tls)[0] == 401:
                refused[server.port] = time.monotonic() - started
        return len(refused) == len(servers)

    wait_for(all_refuse, timeout=REVOCATION_SECONDS * 2, interval=0.05)
    return max(refused.values())


def cli_env(db_url: str) -> dict[str, str]:
    # The plain postgresql:// form hosting platforms hand out must work as well.
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    return {**os.environ, "METERGATE_DATABASE_URL": url}


def test_revoked_key_is_refused_by_every_running_proxy_within_five_seconds(
    both: list[ProxyServer], tls: ssl.SSLContext
) -> None:
    acct = seed_accounts(both[0].state.engine)
    assert all(status_on(server, acct.key, tls) == (200, None) for server in both)  # cached now

    started = time.monotonic()
    with transaction(both[0].state.engine) as session:
        accounts.revoke_key(session, str(acct.key_id))
    elapsed = wait_until_refused(both, acct.key, tls, started)

    assert elapsed < REVOCATION_SECONDS
    assert all(status_on(server, acct.key, tls) == (401, "revoked_api_key") for server in both)


def test_key_revoked_with_the_cli_is_refused_within_five_seconds(
    both: list[ProxyServer], db_url: str, tls: ssl.SSLContext
) -> None:
    acct = seed_accounts(both[0].state.engine)
    with transaction(both[0].state.engine) as session:
        key = session.get(ApiKey, acct.key_id)
        assert key is not None
        prefix = key.prefix
    assert all(status_on(server, acct.key, tls) == (200, None) for server in both)

    done = subprocess.run(
        [str(METERGATE), "key", "revoke", prefix],
        env=cli_env(db_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    started = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert prefix in done.stderr
    elapsed = wait_until_refused(both, acct.key, tls, started)
    assert elapsed < REVOCATION_SECONDS


def test_key_created_with_the_cli_prints_only_its_secret_and_works_at_once(
    proxy: ProxyServer, db_url: str, tls: ssl.SSLContext
) -> None:
    acct: Accounts = seed_accounts(proxy.state.engine)
    result = CliRunner().invoke(
        cli,
        ["key", "create", "--user", acct.user, "--name", "cli", "--env", "dev"],
        env={"METERGATE_DATABASE_URL": cli_env(db_url)["METERGATE_DATABASE_URL"]},
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n"
    assert secret.startswith("mg-") and len(secret) >= 3 + 22
    assert secret not in result.stderr
    assert status_on(proxy, secret, tls) == (200, None)


def test_key_stops_working_when_it_expires_while_cached(
    proxy: ProxyServer, tls: ssl.SSLContext
) -> None:
    acct = seed_accounts(proxy.state.engine)
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    with transaction(proxy.state.engine) as session:
        key = session.get(ApiKey, acct.key_id)
        assert key is not None
        key.expires_at = expires_at
        accounts.announce_change(session)

    wait_for(lambda: status_on(proxy, acct.key, tls) == (200, None), timeout=5)
    wait_for(lambda: status_on(proxy, acct.key, tls) == (401, "expired_api_key"), timeout=5)
    assert datetime.now(UTC) >= expires_at
