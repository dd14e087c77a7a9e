"""Fixtures for end-to-end proxy tests: SDK clients on the proxy, the simulator's controls.

Every client shares one TLS context: building one per client (certifi's bundle) costs
~0.2 s, which over a few hundred tests is most of the suite's time. The traffic is plain
HTTP to 127.0.0.1 either way; the SDKs are otherwise used as they come.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.simulator import SimulatorThread
from shared.models import User
from shared.settings import Settings
from tests.support import Accounts, ProxyServer, running_proxy, settings_for

OpenAIFactory = Callable[..., openai.OpenAI]
AnthropicFactory = Callable[..., anthropic.Anthropic]


class SimControl:
    """The simulator's ``/_sim`` endpoints, and plain HTTP straight to the simulator."""

    def __init__(self, base_url: str, tls: ssl.SSLContext) -> None:
        self.base_url = base_url
        self.http = httpx2.Client(base_url=base_url, timeout=10, verify=tls)

    def close(self) -> None:
        self.http.close()

    def reset(self) -> None:
        self.http.post("/_sim/reset").raise_for_status()

    def queue_fault(self, **rule: Any) -> None:
        self.http.post("/_sim/faults", json=rule).raise_for_status()

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        response = self.http.get("/_sim/requests", params={"limit": limit})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["requests"]
        return result

    def last_request(self) -> dict[str, Any]:
        requests = self.requests(1)
        assert requests, "the simulator received no request"
        return requests[-1]


@pytest.fixture(scope="session")
def tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@pytest.fixture(scope="session")
def edge_proxy(
    db_url: str, simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    """A second proxy on each test database, set for the edges (read them off its settings):

    - bodies over 2 KiB are refused (413);
    - one-second upstream deadlines, one attempt per call and no circuit breaker, so each
      injected fault maps straight to its answer (retries and breakers have their own tests);
    - config changes polled at the shipped default interval, so key revocation is timed as
      deployed.
    """
    settings = settings_for(
        db_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("edge-proxy")),
        max_body_bytes=2_048,
        upstream_first_byte_timeout_seconds=1.0,
        upstream_read_timeout_seconds=1.0,
        retry_max_attempts=1,
        breaker_failure_threshold=1_000_000,
        config_poll_seconds=Settings.model_fields["config_poll_seconds"].default,
    )
    with running_proxy(settings) as server:
        yield server


@pytest.fixture()
def sim(simulator: SimulatorThread, tls: ssl.SSLContext) -> Iterator[SimControl]:
    """The session simulator, reset (request log, faults, prompt cache) for this test."""
    control = SimControl(simulator.base_url, tls)
    control.reset()
    try:
        yield control
    finally:
        control.reset()
        control.close()


@pytest.fixture()
def new_openai(proxy: ProxyServer, tls: ssl.SSLContext) -> OpenAIFactory:
    """``new_openai(key, **options)``: the real openai SDK on the proxy (use it in ``with``)."""

    def build(key: str | None, **options: Any) -> openai.OpenAI:
        options.setdefault("base_url", proxy.base_url + "/v1")
        return openai.OpenAI(
            api_key=key,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=tls),
            **options,
        )

    return build


@pytest.fixture()
def new_async_openai(proxy: ProxyServer, tls: ssl.SSLContext) -> Callable[..., openai.AsyncOpenAI]:
    def build(key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=proxy.base_url + "/v1",
            api_key=key,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=tls),
        )

    return build


@pytest.fixture()
def new_anthropic(proxy: ProxyServer, tls: ssl.SSLContext) -> AnthropicFactory:
    """``new_anthropic(key, **options)``: the real anthropic SDK on the proxy."""

    def build(key: str | None, **options: Any) -> anthropic.Anthropic:
        options.setdefault("base_url", proxy.base_url)
        return anthropic.Anthropic(
            api_key=key,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(verify=tls),
            **options,
        )

    return build


@pytest.fixture()
def new_async_anthropic(
    proxy: ProxyServer, tls: ssl.SSLContext
) -> Callable[..., anthropic.AsyncAnthropic]:
    def build(key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=proxy.base_url,
            api_key=key,
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=tls),
        )

    return build


@pytest.fixture()
def oai(new_openai: OpenAIFactory, acct: Accounts) -> Iterator[openai.OpenAI]:
    """The openai SDK on the proxy with a fresh gateway key."""
    with new_openai(acct.key) as client:
        yield client


@pytest.fixture()
def claude(new_anthropic: AnthropicFactory, acct: Accounts) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK on the proxy with a fresh gateway key."""
    with new_anthropic(acct.key) as client:
        yield client


@pytest.fixture()
def http(proxy: ProxyServer, tls: ssl.SSLContext) -> Iterator[httpx2.Client]:
    """Plain HTTP to the proxy, for what an SDK cannot send (broken bodies, odd routes)."""
    with httpx2.Client(base_url=proxy.base_url, timeout=30, verify=tls) as client:
        yield client


@pytest.fixture()
def owner(proxy: ProxyServer, acct: Accounts) -> tuple[int, int, int]:
    """(tenant id, user id, key id) behind ``acct``: what its records must carry."""
    with Session(proxy.state.engine) as session:
        user = session.scalars(select(User).where(User.email == acct.user)).one()
        return user.tenant_id, user.id, acct.key_id
