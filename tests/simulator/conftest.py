"""Fixtures: one simulator per test session, reset before every test, and the real
`openai` / `anthropic` SDK clients pointed at it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from proxy.simulator import SimulatorThread

ANTHROPIC_MODEL = "claude-sonnet-4-6"


class Control:
    """Calls to the simulator's `/_sim` endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def raw(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body) of a plain HTTP request, errors included."""
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, _lower(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _lower(error.headers.items()), error.read()

    def queue_fault(self, **rule: Any) -> Any:
        return self.call("POST", "/_sim/faults", rule)

    def stats(self) -> Any:
        return self.call("GET", "/_sim/stats")

    def requests(self, limit: int = 10) -> list[Any]:
        result: list[Any] = self.call("GET", f"/_sim/requests?limit={limit}")["requests"]
        return result


def _lower(items: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as simulator:
        yield simulator


@pytest.fixture
def control(sim: SimulatorThread) -> Control:
    ctl = Control(sim.base_url)
    ctl.call("POST", "/_sim/reset")
    ctl.call("POST", "/_sim/config", {"latency_ms": 0, "token_delay_ms": 0, "seed": ""})
    return ctl


@pytest.fixture(scope="session")
def _openai_client(sim: SimulatorThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture(scope="session")
def _anthropic_client(sim: SimulatorThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.base_url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


@pytest.fixture
def oai(_openai_client: openai.OpenAI, control: Control) -> openai.OpenAI:
    """The openai SDK client, on a freshly reset simulator."""
    return _openai_client


@pytest.fixture
def claude(_anthropic_client: anthropic.Anthropic, control: Control) -> anthropic.Anthropic:
    """The anthropic SDK client, on a freshly reset simulator."""
    return _anthropic_client
