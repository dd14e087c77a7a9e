"""OpenTelemetry traces, end to end: the real SDKs -> a proxy exporting OTLP/HTTP -> a real
receiver in the test decoding ``ExportTraceServiceRequest`` protobufs."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from proxy import tracing
from proxy.simulator import SimulatorThread
from shared.db import make_engine, upgrade
from shared.settings import Settings
from tests.proxy.conftest import SimControl
from tests.support import (
    PROVIDER_OPENAI_KEY,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

STAGES_ANSWERED = [
    "read_body",
    "auth",
    "parse",
    "resolve_model",
    "rate_limit",
    "screen",
    "cache_lookup",
    "reserve_quota",
    "upstream",
    "price",
    "answer",
    "record",
]
STAGES_STREAMED = [*STAGES_ANSWERED[:9], "stream", "price", "record"]


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    service_name: str
    pid: int


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


class OtlpReceiver:
    """A collector's OTLP/HTTP traces endpoint: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received = ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=[
                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                            for e in span.events
                        ],
                        service_name=str(resource.get("service.name")),
                        pid=int(resource.get("process.pid", 0)),
                    )
                    with self.lock:
                        self.spans.append(received)

    def trace_of(self, request_id: str) -> list[ReceivedSpan]:
        """The spans carrying this request id, in the order they started (root first)."""
        with self.lock:
            spans = [s for s in self.spans if s.attributes.get(tracing.REQUEST_ID) == request_id]
        return sorted(spans, key=lambda s: (s.start, s.parent_span_id != ""))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traced_proxy(
    pg_url: str,
    simulator: SimulatorThread,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    settings = settings_for(
        pg_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("traced-proxy")),
        otel_endpoint=receiver.url,
        otel_service_name="metergate-test",
        retry_base_seconds=0.01,
    )
    with running_proxy(settings) as server:
        yield server


def exported(server: ProxyServer) -> None:
    """Everything the proxy's tracer has ended, delivered to the receiver now."""
    assert server.state.pipeline.gateway.tracing is not None
    assert server.state.pipeline.gateway.tracing.force_flush()


def check_trace(spans: list[ReceivedSpan], request_id: str, stages: list[str]) -> ReceivedSpan:
    """One root span and its stages, in order, each carrying the request id; returns root."""
    root, children = spans[0], spans[1:]
    assert root.name == tracing.ROOT_SPAN and root.parent_span_id == ""
    assert [span.name for span in children] == stages
    for span in spans:
        assert span.attributes[tracing.REQUEST_ID] == request_id
        assert span.trace_id == root.trace_id
        assert span.service_name == "metergate-test"
    for span in children:
        assert span.parent_span_id == root.span_id
    for before, after in zip(children, children[1:], strict=False):
        assert before.end <= after.start  # stages follow each other
    assert root.start <= children[0].start and children[-1].end <= root.end
    return root


def test_chat_completion_is_traced_stage_by_stage(
    traced_proxy: ProxyServer, receiver: OtlpReceiver, sim: SimControl
) -> None:
    acct = seed_accounts(traced_proxy.state.engine)
    with openai.OpenAI(
        base_url=traced_proxy.base_url + "/v1", api_key=acct.key, max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"trace me {uuid.uuid4()}"}],
        )
    request_id = raw.headers["x-request-id"]
    exported(traced_proxy)

    spans = receiver.trace_of(request_id)
    root = check_trace(spans, request_id, STAGES_ANSWERED)
    assert root.attributes["metergate.record_id"] == raw.headers["x-metergate-record-id"]
    assert root.attributes["metergate.model"] == "gpt-4o-mini"
    assert root.attributes["http.response.status_code"] == 200
    tenant_id = root.attributes["metergate.tenant_id"]
    assert isinstance(tenant_id, int)
    by_name = {span.name: span for span in spans}
    assert by_name["auth"].attributes["metergate.tenant_id"] == tenant_id
    assert by_name["resolve_model"].attributes["metergate.model"] == "gpt-4o-mini"
    # The upstream request carried the upstream span's trace context.
    traceparent = sim.last_request()["headers"]["traceparent"]
    _, trace_id, parent_id, _ = traceparent.split("-")
    assert (trace_id, parent_id) == (root.trace_id, by_name["upstream"].span_id)
    assert [name for name, _ in by_name["upstream"].events] == ["upstream.attempt"]


def test_retries_are_events_of_the_upstream_span(
    traced_proxy: ProxyServer, receiver: OtlpReceiver, sim: SimControl
) -> None:
    acct = seed_accounts(traced_proxy.state.engine)
    sim.queue_fault(fault="500", count=1, path="/v1/chat/completions")
    with openai.OpenAI(
        base_url=traced_proxy.base_url + "/v1", api_key=acct.key, max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"retry {uuid.uuid4()}"}]
        )
    exported(traced_proxy)
    spans = receiver.trace_of(raw.headers["x-request-id"])
    upstream = next(span for span in spans if span.name == "upstream")
    attempts = [attributes for name, attributes in upstream.events]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert [a.get("status") for a in attempts] == [500, 200]


def test_stream_is_traced_until_its_record(
    traced_proxy: ProxyServer, receiver: OtlpReceiver, sim: SimControl
) -> None:
    acct = seed_accounts(traced_proxy.state.engine)
    request_id = f"client-{uuid.uuid4()}"
    with anthropic.Anthropic(
        base_url=traced_proxy.base_url, api_key=acct.key, max_retries=0
    ) as client:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": f"stream {uuid.uuid4()}"}],
            extra_headers={"x-request-id": request_id},
        ) as stream:
            stream.get_final_message()
    exported(traced_proxy)
    root = check_trace(receiver.trace_of(request_id), request_id, STAGES_STREAMED)
    assert root.attributes["metergate.dialect"] == "anthropic"
    assert root.attributes["metergate.model"] == "claude-haiku-4-5"


def test_refusal_ends_the_trace_at_the_stage_that_refused(
    traced_proxy: ProxyServer, receiver: OtlpReceiver
) -> None:
    with openai.OpenAI(
        base_url=traced_proxy.base_url + "/v1", api_key="mg-not-a-real-key-000000", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    request_id = refused.value.response.headers["x-request-id"]
    exported(traced_proxy)
    spans = receiver.trace_of(request_id)
    root = check_trace(spans, request_id, ["read_body", "auth", "record"])
    assert spans[2].attributes["metergate.error_code"] == "invalid_api_key"
    assert root.attributes["http.response.status_code"] == 401


def test_tracing_is_off_by_default_no_spans_no_exporter(
    proxy: ProxyServer,
    sim: SimControl,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not Settings.model_fields["otel_endpoint"].default
    assert proxy.state.pipeline.gateway.tracing is None  # no provider, exporter or thread
    built: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> None:
        built.append(args)
        raise AssertionError("a span was made with tracing off")

    monkeypatch.setattr(tracing.Trace, "__init__", counting)
    acct = seed_accounts(proxy.state.engine)
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0) as client:
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"quiet {uuid.uuid4()}"}]
        )
    assert completion.choices[0].message.content
    assert built == []
    assert "traceparent" not in sim.last_request()["headers"]


def test_standard_otlp_endpoint_variable_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERGATE_OTEL_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    settings = Settings()
    assert tracing.traces_url(settings.otel_endpoint) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("METERGATE_OTEL_ENDPOINT", "http://mine:4318")
    assert Settings().otel_endpoint == "http://mine:4318"  # the gateway's own name wins


def test_each_gunicorn_worker_exports_its_own_traces(
    pg_url: str,
    redis_url: str,
    simulator: SimulatorThread,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    """The tracer provider is built in each worker after the fork: spans come from both
    workers' pids, and every call's trace arrives whole (the last ones at SIGTERM)."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    acct = seed_accounts(engine)
    engine.dispose()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": pg_url,
        "METERGATE_DATA_DIR": str(tmp_path / "data"),
        "METERGATE_REDIS_URL": redis_url,  # several workers (embedded mode runs one)
        "OPENAI_API_KEY": PROVIDER_OPENAI_KEY,
        "OPENAI_BASE_URL": simulator.base_url + "/v1",
        "METERGATE_OTEL_ENDPOINT": receiver.url,
        "METERGATE_OTEL_SERVICE_NAME": "metergate-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export every 50 ms (the standard setting)
        "TMPDIR": str(tmp_path),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "proxy.cli", "serve", "proxy", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sent: list[str] = []
    try:

        def is_up() -> bool:
            try:
                return httpx2.get(base_url + "/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_for(is_up, timeout=120, interval=0.1)

        def send(request_id: str) -> int:
            # A connection per call, several at once: the workers share them out.
            headers = {
                "Authorization": f"Bearer {acct.key}",
                "Connection": "close",
                "x-request-id": request_id,
            }
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            url = base_url + "/v1/chat/completions"
            return httpx2.post(url, json=body, headers=headers, timeout=30).status_code

        def exporting_pids() -> set[int]:
            return {span.pid for request_id in sent for span in receiver.trace_of(request_id)}

        with ThreadPoolExecutor(8) as pool:
            while len(exporting_pids()) < 2:
                assert len(sent) < 400, f"one worker took every call: {exporting_pids()}"
                batch = [f"gunicorn-{uuid.uuid4()}" for _ in range(8)]
                assert list(pool.map(send, batch)) == [200] * 8
                sent += batch
                wait_for(lambda b=batch: all(receiver.trace_of(i) for i in b), timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output.decode(errors="replace")[-2000:]
    for request_id in sent:
        spans = receiver.trace_of(request_id)
        check_trace(spans, request_id, STAGES_ANSWERED)
        assert len({span.pid for span in spans}) == 1 and spans[0].pid != os.getpid()
