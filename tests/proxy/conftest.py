"""Fixtures for end-to-end proxy tests: SDK clients on the proxy, the simulator's controls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.simulator import SimulatorThread
from shared.models import User
from tests.support import Accounts, ProxyServer


class SimControl:
    """The simulator's ``/_sim`` endpoints, and plain HTTP straight to the simulator."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx2.Client(base_url=base_url, timeout=10)

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


@pytest.fixture()
def sim(simulator: SimulatorThread) -> Iterator[SimControl]:
    """The session simulator, reset (request log, faults, prompt cache) for this test."""
    control = SimControl(simulator.base_url)
    control.reset()
    try:
        yield control
    finally:
        control.reset()
        control.close()


@pytest.fixture()
def oai(proxy: ProxyServer, acct: Accounts) -> Iterator[openai.OpenAI]:
    """The real openai SDK pointed at the proxy with a fresh gateway key."""
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0) as client:
        yield client


@pytest.fixture()
def claude(proxy: ProxyServer, acct: Accounts) -> Iterator[anthropic.Anthropic]:
    """The real anthropic SDK pointed at the proxy with a fresh gateway key."""
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=acct.key, max_retries=0) as client:
        yield client


@pytest.fixture()
def http(proxy: ProxyServer) -> Iterator[httpx2.Client]:
    """Plain HTTP to the proxy, for what an SDK cannot send (broken bodies, odd routes)."""
    with httpx2.Client(base_url=proxy.base_url, timeout=30) as client:
        yield client


@pytest.fixture()
def owner(proxy: ProxyServer, acct: Accounts) -> tuple[int, int, int]:
    """(tenant id, user id, key id) behind ``acct``: what its records must carry."""
    with Session(proxy.state.engine) as session:
        user = session.scalars(select(User).where(User.email == acct.user)).one()
        return user.tenant_id, user.id, acct.key_id
