"""Prometheus ``/metrics``: what one process counts, and the sum over gunicorn's workers.

The in-process tests run their own proxy (fresh counters, fast retries, a breaker that
opens after 3 failures) against the session simulator. The last test runs
``metergate serve proxy --workers 2`` as a real process and scrapes the summed counts.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.simulator import SimulatorThread
from shared import accounts
from shared.db import make_engine, transaction, upgrade
from tests.proxy.conftest import SimControl
from tests.proxy.test_serve import free_port
from tests.support import (
    PROVIDER_OPENAI_KEY,
    Accounts,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

CHAT = "chat.completions"


class Scrape:
    """One scrape of ``/metrics``, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


def scrape(base_url: str) -> Scrape:
    response = httpx2.get(base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


@pytest.fixture(scope="module")
def metered(
    pg_url: str, simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    settings = settings_for(
        pg_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("metrics")),
        retry_max_attempts=3,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        breaker_failure_threshold=3,
        breaker_cooldown_seconds=60.0,
    )
    with running_proxy(settings) as server:
        yield server


@pytest.fixture(scope="module")
def metered_acct(metered: ProxyServer) -> Accounts:
    return seed_accounts(metered.state.engine)


def new_model(server: ProxyServer) -> str:
    """A model of its own (so its breaker and counters are this test's)."""
    name = f"met-{uuid.uuid4().hex[:8]}"
    with transaction(server.state.engine) as session:
        accounts.upsert_model(
            session,
            name,
            provider="openai",
            upstream_model=None,
            input_per_mtok=Decimal(1),
            output_per_mtok=Decimal(2),
        )
    server.state.config.clear()
    return name


def chat(server: ProxyServer, key: str, model: str, *, stream: bool = False) -> int:
    """One chat call through the real SDK; its HTTP status."""
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client:
        try:
            if stream:
                for _ in client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    pass
            else:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


def test_calls_are_counted_by_dialect_endpoint_model_status_and_cache(
    metered: ProxyServer, metered_acct: Accounts
) -> None:
    model = new_model(metered)
    assert chat(metered, metered_acct.key, model) == 200
    assert chat(metered, metered_acct.key, model, stream=True) == 200
    metered.flush()
    got = scrape(metered.base_url)
    labels = {"dialect": "openai", "endpoint": CHAT, "model": model}
    assert got.value("metergate_requests_total", **labels, status="200", cache="miss") == 2
    assert got.value("metergate_request_duration_seconds_count", endpoint=CHAT) >= 2
    assert got.value("metergate_overhead_duration_seconds_count", endpoint=CHAT) >= 2
    assert got.value("metergate_upstream_duration_seconds_count", model=model) == 2
    assert got.value("metergate_time_to_first_token_seconds_count", model=model, stream="true") == 1
    assert (
        got.value("metergate_time_to_first_token_seconds_count", model=model, stream="false") == 1
    )
    assert got.value("metergate_tokens_total", model=model, kind="prompt") > 0
    assert got.value("metergate_tokens_total", model=model, kind="completion") > 0
    assert got.value("metergate_cost_usd_total", model=model) > 0
    assert got.value("metergate_upstream_attempts_total", model=model, result="ok") == 2
    assert got.value("metergate_upstream_breaker_state", model=model) == 0
    assert "metergate_record_queue_depth" in got.text
    assert got.value("metergate_records_spooled") == 0


@pytest.mark.parametrize(
    ("key", "model", "status", "reason"),
    [
        (None, "gpt-4o-mini", 401, "authentication"),
        ("mg-not-a-real-key-000000000", "gpt-4o-mini", 401, "authentication"),
        ("<acct>", "no-such-model", 404, "not_found"),
    ],
)
def test_refusals_are_counted_by_reason_and_unknown_models_stay_one_label(
    metered: ProxyServer,
    metered_acct: Accounts,
    key: str | None,
    model: str,
    status: int,
    reason: str,
) -> None:
    before = scrape(metered.base_url)
    headers = {"Authorization": f"Bearer {metered_acct.key}"} if key == "<acct>" else {}
    if key not in (None, "<acct>"):
        headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    url = metered.base_url + "/v1/chat/completions"
    assert httpx2.post(url, json=body, headers=headers, timeout=30).status_code == status
    after = scrape(metered.base_url)
    refusals = "metergate_refusals_total"
    assert after.value(refusals, reason=reason) == before.value(refusals, reason=reason) + 1
    assert 'model="no-such-model"' not in after.text  # client-chosen names are not labels
    requests = "metergate_requests_total"
    labels = {"status": str(status), "model": "-"}
    assert after.value(requests, **labels) == before.value(requests, **labels) + 1


def test_upstream_retries_and_an_open_breaker_are_counted(
    metered: ProxyServer, metered_acct: Accounts, sim: SimControl
) -> None:
    recovering, failing = new_model(metered), new_model(metered)
    before = scrape(metered.base_url)
    sim.queue_fault(fault="500", model=recovering, count=2)
    assert chat(metered, metered_acct.key, recovering) == 200
    sim.queue_fault(fault="500", model=failing, count=3)
    assert chat(metered, metered_acct.key, failing) == 502
    got = scrape(metered.base_url)
    assert got.value("metergate_upstream_retries_total", model=recovering) == 2
    assert got.value("metergate_upstream_attempts_total", model=recovering, result="500") == 2
    assert got.value("metergate_upstream_attempts_total", model=recovering, result="ok") == 1
    assert got.value("metergate_upstream_breaker_state", model=recovering) == 0
    assert got.value("metergate_upstream_retries_total", model=failing) == 2
    assert got.value("metergate_upstream_breaker_state", model=failing) == 2  # open
    refusals = "metergate_refusals_total"
    assert got.value(refusals) == before.value(refusals)  # upstream failures are no refusals


@pytest.mark.timeout(300)  # two workers importing the SDKs take a while on a busy machine
def test_metrics_are_summed_over_two_gunicorn_workers(
    pg_url: str, redis_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    acct = seed_accounts(engine)
    engine.dispose()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": pg_url,
        "METERGATE_DATA_DIR": str(tmp_path / "data"),
        "METERGATE_REDIS_URL": redis_url,
        "OPENAI_API_KEY": PROVIDER_OPENAI_KEY,
        "OPENAI_BASE_URL": simulator.base_url + "/v1",
        "TMPDIR": str(tmp_path),  # where the server makes its metrics directory
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "proxy.cli", "serve", "proxy", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def is_up() -> bool:
            try:
                return httpx2.get(base_url + "/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_for(is_up, timeout=120, interval=0.1)
        [metrics_dir] = glob.glob(str(tmp_path / "metergate-metrics-*"))
        assert not glob.glob(metrics_dir + "/counter_*.db")  # fresh: nothing counted yet

        def send(model: str) -> int:
            # A connection per call, several at once: the workers share them out.
            headers = {"Authorization": f"Bearer {acct.key}", "Connection": "close"}
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            url = base_url + "/v1/chat/completions"
            return httpx2.post(url, json=body, headers=headers, timeout=30).status_code

        def workers_counting() -> set[str]:
            return {path.rsplit("_", 1)[1] for path in glob.glob(metrics_dir + "/counter_*.db")}

        sent = refused = 0
        with ThreadPoolExecutor(8) as pool:
            while len(workers_counting()) < 2:
                assert sent < 400, "one worker took every call"
                models = ["gpt-4o-mini"] * 7 + ["no-such-model"]
                statuses = list(pool.map(send, models))
                assert statuses == [200] * 7 + [404]
                sent, refused = sent + 8, refused + 1

        def summed() -> Scrape | None:
            got = scrape(base_url)  # any one worker answers, with every worker's counts
            return got if got.value("metergate_requests_total") == sent else None

        got = wait_for(summed, timeout=30)
        assert got.value("metergate_requests_total", status="200", model="gpt-4o-mini") == (
            sent - refused
        )
        assert got.value("metergate_refusals_total", reason="not_found") == refused
        assert got.value("metergate_request_duration_seconds_count") == sent
        assert got.value("metergate_tokens_total", kind="prompt") > 0
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output.decode(errors="replace")[-2000:]
    assert not glob.glob(str(tmp_path / "metergate-metrics-*"))  # removed when it stopped
