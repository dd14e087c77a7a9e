"""Sentry error reporting: a proxy with a DSN pointing at a local receiver reports an
unexpected error inside the pipeline, and no key of any kind is in what it sends."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import sentry_sdk

from proxy import pipeline
from proxy.sentry import REDACTED, init_sentry, scrub_event
from proxy.simulator import SimulatorThread
from tests.support import (
    PROVIDER_ANTHROPIC_KEY,
    PROVIDER_OPENAI_KEY,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
)


class SentryReceiver:
    """Sentry's ingestion endpoint for project 1: POST /api/1/envelope/."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.startswith("/api/1/envelope/"):
                    with receiver.lock:
                        receiver.envelopes.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_port}/1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        """The error events received (envelope items of type "event")."""
        found = []
        with self.lock:
            envelopes = list(self.envelopes)
        for envelope in envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def everything_sent(self) -> bytes:
        with self.lock:
            return b"\n".join(self.envelopes)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[SentryReceiver]:
    server = SentryReceiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reporting_proxy(
    pg_url: str,
    simulator: SimulatorThread,
    receiver: SentryReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    settings = settings_for(
        pg_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("sentry-proxy")),
        sentry_dsn=receiver.dsn,
    )
    try:
        with running_proxy(settings) as server:
            yield server
    finally:  # the client is process-wide: the tests after these report nowhere
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_unexpected_error_in_a_stage_is_reported_without_keys(
    reporting_proxy: ProxyServer,
    receiver: SentryReceiver,
    monkeypatch: pytest.MonkeyPatch,
    dialect: str,
) -> None:
    acct = seed_accounts(reporting_proxy.state.engine)
    marker = f"bug-{uuid.uuid4().hex[:8]}"
    prompt = f"a prompt {uuid.uuid4()}"

    def broken_stage(*args: Any) -> Any:
        # A bug whose message carries what it should not: both keys of the call.
        raise RuntimeError(f"{marker}: holding {acct.key} and {PROVIDER_OPENAI_KEY}")

    monkeypatch.setattr(pipeline, "resolve_model", broken_stage)
    if dialect == "openai":
        with openai.OpenAI(
            base_url=reporting_proxy.base_url + "/v1", api_key=acct.key, max_retries=0
        ) as client:
            with pytest.raises(openai.InternalServerError) as failed:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
                )
        assert failed.value.response.json()["error"]["code"] == "internal_error"
    else:
        with anthropic.Anthropic(
            base_url=reporting_proxy.base_url, api_key=acct.key, max_retries=0
        ) as claude:
            with pytest.raises(anthropic.InternalServerError) as broken:
                claude.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=20,
                    messages=[{"role": "user", "content": prompt}],
                )
        assert broken.value.response.json()["type"] == "error"
    sentry_sdk.flush(10)
    assert not sentry_sdk.get_client().should_send_default_pii()

    events = [e for e in receiver.events() if marker in json.dumps(e)]
    assert len(events) == 1
    event = events[0]
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert exception["value"].startswith(f"{marker}: holding [REDACTED")
    assert event["request"]["url"].endswith(
        "/v1/" + ("chat/completions" if dialect == "openai" else "messages")
    )
    headers = {name.lower() for name in event["request"]["headers"]}
    assert "authorization" not in headers and "x-api-key" not in headers
    sent = receiver.everything_sent()
    for secret in (acct.key, PROVIDER_OPENAI_KEY, PROVIDER_ANTHROPIC_KEY):
        assert secret.encode() not in sent
    assert prompt.encode() not in sent  # no request body either


def test_sentry_is_off_without_a_dsn(tmp_path: Path) -> None:
    settings = settings_for("sqlite://", "http://127.0.0.1:9", tmp_path)
    assert not settings.sentry_dsn.get_secret_value()
    assert init_sentry(settings) is False


def test_scrub_drops_credential_headers_and_redacts_secrets_anywhere() -> None:
    event = {
        "request": {
            "headers": {
                "Authorization": "Bearer eyJabc.def.ghi",
                "X-Api-Key": "mg-x",
                "Accept": "*/*",
            },
            "data": '{"messages": "secret prompt"}',
        },
        "extra": {"note": ["provider key sk-custom-key-shape here", "Bearer abcdefgh12345"]},
        "message": "saw mg-abcdefghijklmnop1234 in a log line",
    }
    scrubbed = scrub_event(event, ("sk-custom-key-shape",))
    assert scrubbed["request"] == {"headers": {"Accept": "*/*"}}
    assert scrubbed["extra"]["note"][0] == f"provider key {REDACTED} here"
    assert "abcdefgh12345" not in scrubbed["extra"]["note"][1]
    assert "mg-abcdefghijklmnop1234" not in scrubbed["message"]
