"""The `/_sim` control surface and the background-thread runner."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import openai
import pytest

from proxy.simulator import SimulatorConfig, SimulatorThread

from .conftest import Control

MESSAGES: Any = [{"role": "user", "content": "hello"}]


def test_health_answers_ok(control: Control) -> None:
    assert control.call("GET", "/_sim/health") == {"ok": True}


def test_stats_count_requests_per_path_and_model_until_reset(
    oai: openai.OpenAI, control: Control
) -> None:
    oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    oai.models.list()
    stats = control.stats()
    assert stats["total"] == 4
    assert stats["in_flight"] == 0
    assert stats["by_path"] == {"/v1/chat/completions": 3, "/v1/models": 1}
    assert stats["by_path_model"] == {"/v1/chat/completions": {"gpt-4o": 1, "gpt-4o-mini": 2}}
    control.call("POST", "/_sim/reset")
    assert control.stats()["total"] == 0
    assert control.requests() == []


def test_stats_show_requests_in_flight(sim: SimulatorThread, control: Control) -> None:
    def slow_request() -> None:
        with openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sk", max_retries=0) as c:
            c.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, extra_headers={"x-sim-latency-ms": "400"}
            )

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + 2
    while control.stats()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert control.stats()["in_flight"] == 1
    worker.join()
    assert control.stats()["in_flight"] == 0


def test_request_log_keeps_lowercased_headers_and_parsed_bodies(
    oai: openai.OpenAI, control: Control
) -> None:
    oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"X-Trace-Id": "abc"}
    )
    oai.embeddings.create(model="text-embedding-3-small", input="x")
    first, second = control.requests(limit=2)
    assert first["path"] == "/v1/chat/completions" and first["method"] == "POST"
    assert first["headers"]["x-trace-id"] == "abc"
    assert first["headers"]["authorization"] == "Bearer sk-test"
    assert first["body"]["messages"] == MESSAGES
    assert second["path"] == "/v1/embeddings"
    assert control.requests(limit=1) == [second]


def test_invalid_json_is_logged_as_text(control: Control) -> None:
    control.raw("POST", "/v1/chat/completions", b"{nope")
    assert control.requests(1)[0]["body"] == "{nope"


def test_config_changes_at_runtime_and_rejects_unknown_settings(control: Control) -> None:
    updated = control.call("POST", "/_sim/config", {"latency_ms": 5, "seed": "s"})
    assert updated["latency_ms"] == 5.0 and updated["seed"] == "s"
    assert control.call("GET", "/_sim/config")["latency_ms"] == 5.0
    for bad in ({"colour": 1}, {"latency_ms": -1}, {"seed": 3}):
        status, _, _ = control.raw("POST", "/_sim/config", json.dumps(bad).encode())
        assert status == 400


def test_thread_picks_a_free_port_and_stops_with_a_hung_request_open() -> None:
    config = SimulatorConfig(latency_ms=0, seed="x")
    with SimulatorThread(config) as first, SimulatorThread() as second:
        assert first.port != second.port
        assert first.base_url == f"http://127.0.0.1:{first.port}"
        client = openai.OpenAI(
            base_url=first.base_url + "/v1", api_key="sk", max_retries=0, timeout=5
        )
        errors: list[BaseException] = []

        def hang() -> None:
            try:
                client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, extra_headers={"x-sim-fault": "hang"}
                )
            except openai.APIError as exc:
                errors.append(exc)

        worker = threading.Thread(target=hang)
        worker.start()
        deadline = time.monotonic() + 2
        while first.state.stats.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        first.stop()
        worker.join()
        client.close()
        assert time.monotonic() - started < 2
        assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)


def test_thread_runs_only_once() -> None:
    simulator = SimulatorThread()
    with simulator:
        pass
    with pytest.raises(RuntimeError):
        simulator.start()
