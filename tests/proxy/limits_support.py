"""Machinery for the rate-limit and quota tests: Redis databases, dear models, accounts
with limits, and a second proxy process (``metergate serve proxy``, gunicorn) on the same
Redis and PostgreSQL as an in-process one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from proxy.config_cache import NO_LIMITS, EffectiveLimits, Principal
from shared import accounts
from shared.accounts import Limits
from shared.db import transaction
from shared.models import RequestRecord
from tests.support import PROVIDER_ANTHROPIC_KEY, PROVIDER_OPENAI_KEY, wait_for

# Redis databases of these tests (the shared fixtures use 9): proxies, and the bare store.
REDIS_PROXY_URL = "redis://127.0.0.1:6379/10"
REDIS_STORE_URL = "redis://127.0.0.1:6379/11"

# One token costs $0.001 at these prices, so budgets in cents are spent in a few calls.
DEAR_OPENAI = "mg-test-dear"
DEAR_ANTHROPIC = "mg-test-dear-claude"
DEAR_PER_MTOK = Decimal(1000)


@contextmanager
def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A Redis database emptied before and after."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def add_dear_models(engine: Engine) -> None:
    with transaction(engine) as session:
        for name, provider, upstream in (
            (DEAR_OPENAI, "openai", "gpt-4o-mini"),
            (DEAR_ANTHROPIC, "anthropic", "claude-haiku-4-5"),
        ):
            accounts.upsert_model(
                session,
                name,
                provider=provider,
                upstream_model=upstream,
                input_per_mtok=DEAR_PER_MTOK,
                output_per_mtok=DEAR_PER_MTOK,
            )


@dataclass
class Account:
    tenant: str
    tenant_id: int
    user: str
    user_id: int
    key: str
    key_id: int


def make_account(
    engine: Engine,
    *,
    limits: Limits | None = None,
    tenant: str | None = None,
    tenant_usd: Decimal | None = None,
    key_limits: Limits | None = None,
    end_user_limits: Limits | None = None,
) -> Account:
    """A user with a key; in ``tenant`` if given (created when missing)."""
    label = uuid.uuid4().hex[:8]
    tenant = tenant or f"tenant-{label}"
    with transaction(engine) as session:
        try:
            row = accounts.get_tenant(session, tenant)
        except accounts.AccountError:
            row = accounts.create_tenant(session, tenant, tenant_usd)
        accounts.create_tier(session, f"tier-{label}", limits or Limits())
        user = accounts.create_user(session, f"user-{label}@example.com", tenant, f"tier-{label}")
        key, secret = accounts.create_key(session, user.email, name="limits")
        if key_limits is not None or end_user_limits is not None:
            end_user_tier = None
            if end_user_limits is not None:
                end_user_tier = f"end-users-{label}"
                accounts.create_tier(session, end_user_tier, end_user_limits)
            session.flush()
            accounts.set_key_limits(
                session, str(key.id), key_limits or Limits(), end_user_tier=end_user_tier
            )
        session.flush()
        return Account(tenant, row.id, user.email, user.id, secret, key.id)


def recorded_spend(engine: Engine, **where: int) -> tuple[int, Decimal]:
    """(tokens, USD) of calls recorded for e.g. ``user_id=…`` (cache hits aside), all time."""
    with Session(engine) as session:
        query = select(
            func.coalesce(
                func.sum(RequestRecord.prompt_tokens + RequestRecord.completion_tokens), 0
            ),
            func.coalesce(func.sum(RequestRecord.cost_usd), 0),
        ).filter_by(is_cached=False, **where)
        tokens, usd = session.execute(query).one()
        return int(tokens), Decimal(str(usd))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GunicornProxy:
    """``metergate serve proxy`` (one gunicorn worker) in a subprocess, on the given
    database and Redis. It boots in the background: call ``ready`` when it is needed."""

    def __init__(
        self, database_url: str, redis_url: str, simulator_url: str, data_dir: Path
    ) -> None:
        port = free_port()
        env = {
            **os.environ,
            "METERGATE_DATABASE_URL": database_url,
            "METERGATE_REDIS_URL": redis_url,
            "METERGATE_DATA_DIR": str(data_dir),
            "METERGATE_CONFIG_POLL_SECONDS": "0.2",
            "METERGATE_RECORD_FLUSH_SECONDS": "0.05",
            "OPENAI_API_KEY": PROVIDER_OPENAI_KEY,
            "OPENAI_BASE_URL": simulator_url + "/v1",
            "ANTHROPIC_API_KEY": PROVIDER_ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": simulator_url,
        }
        command = [sys.executable, "-m", "proxy.cli", "serve", "proxy", "--port", str(port)]
        command += ["--workers", "1", "--threads", "32"]
        self.base_url = f"http://127.0.0.1:{port}"
        self._is_ready = False
        self._server = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def ready(self) -> str:
        """The base URL, once the server answers (a minute at most)."""
        wait_for(self._is_up, timeout=60, interval=0.05)
        self._is_ready = True
        return self.base_url

    def stop(self) -> None:
        """Quick shutdown (SIGQUIT): its records are not what the tests look at. A server
        stopped while still booting (no test needed it) may die of the signal instead."""
        self._server.send_signal(signal.SIGQUIT)
        output, _ = self._server.communicate(timeout=60)
        if self._is_ready:
            assert self._server.returncode == 0, output.decode(errors="replace")[-3000:]

    def _is_up(self) -> bool:
        if self._server.poll() is not None:
            output = self._server.communicate()[0].decode(errors="replace")
            raise AssertionError(f"the proxy process exited: {output[-3000:]}")
        try:
            return httpx2.get(self.base_url + "/healthz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False


@dataclass
class Outcome:
    """What a client saw: status, headers (lower-case), the JSON body, the record's id."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def record_id(self) -> str:
        return self.headers["x-metergate-record-id"]

    @property
    def error_type(self) -> str | None:
        error = self.body.get("error")
        return error.get("type") if isinstance(error, dict) else None

    @property
    def message(self) -> str:
        error = self.body.get("error")
        return str(error.get("message")) if isinstance(error, dict) else ""


def client_for(dialect: str, base_url: str, key: str) -> openai.OpenAI | anthropic.Anthropic:
    if dialect == "openai":
        return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    return anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)


def ask(
    client: openai.OpenAI | anthropic.Anthropic,
    *,
    model: str | None = None,
    max_tokens: int = 32,
    end_user: str | None = None,
    stream: bool = False,
    text: str = "hi",
    extra_body: dict[str, Any] | None = None,
) -> Outcome:
    """One call through the official SDK; a refusal is returned, not raised."""
    messages: Any = [{"role": "user", "content": text}]
    try:
        if isinstance(client, openai.OpenAI):
            extra: dict[str, Any] = {} if end_user is None else {"user": end_user}
            raw: Any = client.chat.completions.with_raw_response.create(
                model=model or "gpt-4o-mini",
                max_tokens=max_tokens,
                messages=messages,
                stream=stream,
                extra_body=extra_body,
                **extra,
            )
        else:
            metadata: Any = {} if end_user is None else {"metadata": {"user_id": end_user}}
            raw = client.messages.with_raw_response.create(
                model=model or "claude-haiku-4-5",
                max_tokens=max_tokens,
                messages=messages,
                stream=stream,
                extra_body=extra_body,
                **metadata,
            )
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        response = exc.response
        return Outcome(response.status_code, dict(response.headers), response.json())
    parsed = raw.parse()
    if stream:
        events = list(parsed)
        body: dict[str, Any] = {"events": len(events)}
    else:
        body = parsed.model_dump()
    return Outcome(raw.status_code, dict(raw.headers), body)


_ids = iter(range(10_000_000, 20_000_000))


def unique_id() -> int:
    """An id no account in the database has: keeps counters of separate tests apart."""
    return next(_ids)


def principal_with(
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    monthly_tokens: int | None = None,
    monthly_usd: Decimal | None = None,
    user_id: int | None = None,
) -> Principal:
    """A caller whose user (tier) has these limits, for tests of one stage on its own."""
    user_id = user_id or unique_id()
    limits = EffectiveLimits(rpm, tpm, monthly_tokens, monthly_usd, None, None)
    return Principal(
        key_id=user_id,
        key_prefix="mg-test",
        key_hash="0" * 64,
        environment="test",
        expires_at=None,
        is_revoked=False,
        user_id=user_id,
        user_email="someone@example.com",
        tenant_id=user_id,
        tenant_name="tenant",
        tenant_monthly_usd=None,
        tier_name="tier",
        limits=limits,
        allowed_models=None,
        user_limits=limits,
        key_limits=NO_LIMITS,
    )
