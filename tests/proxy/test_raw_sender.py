"""The hot path's upstream POST (``RawSender``) sends what the SDK itself would send.

Each SDK's own request path (``send_raw``: ``client.post``) and the raw sender send the
same call to an in-memory transport; the requests must match: method, URL, every header
(auth, version, user agent, platform headers, the per-call timeout and retry headers,
the caller's forwarded headers), the JSON body and the timeout. And the raw sender's
failures are the ones ``send_raw`` raises.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
import trustme

from proxy.providers import sdk as sdk_module
from proxy.providers.base import UpstreamHttpError, UpstreamTimeout, UpstreamUnreachable
from proxy.providers.sdk import (
    LazySdk,
    RawSender,
    clipped_timeout,
    direct_pool,
    sdk_headers,
    send_raw,
    show_headers,
    timeout_for,
)

TIMEOUT = timeout_for(5.0, 60.0, 30.0)
BODY = {"model": "m", "messages": [{"role": "user", "content": 'héllo ✓ "quoted"\n'}]}
SDKS = [
    pytest.param(openai, "OpenAI", "http://upstream.test/v1", "/chat/completions", id="openai"),
    pytest.param(anthropic, "Anthropic", "http://upstream.test", "/v1/messages", id="anthropic"),
]


def _options(base_url: str) -> dict[str, Any]:
    return {"api_key": "sk-test", "base_url": base_url, "max_retries": 0, "timeout": TIMEOUT}


def _recorder(
    seen: list[httpx2.Request], answer: Callable[[httpx2.Request], httpx2.Response] | None = None
) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        request.read()
        seen.append(request)
        return answer(request) if answer else httpx2.Response(200, content=b'{"ok":true}')

    return httpx2.MockTransport(handle)


def _sender(module: Any, client_class: str, base_url: str, transport: Any) -> RawSender:
    make = getattr(module, client_class)
    options = _options(base_url)
    http = httpx2.Client(transport=transport, timeout=TIMEOUT)
    client = make(http_client=http, **options)
    return RawSender(http, str(client.base_url), sdk_headers(make, options))


def _forwarded(module: Any) -> dict[str, str]:
    forwarded = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    if module is anthropic:
        forwarded["anthropic-beta"] = "prompt-caching-2024-07-31 \u00cf"  # non-ASCII: UTF-8
    return forwarded


def _sent_by_sdk(
    module: Any,
    client_class: str,
    base_url: str,
    path: str,
    forwarded: dict[str, str],
    timeout: httpx2.Timeout | None,
) -> httpx2.Request:
    """The request the SDK's own request path sends (to an in-memory transport)."""
    by_sdk: list[httpx2.Request] = []
    client = getattr(module, client_class)(
        http_client=httpx2.Client(transport=_recorder(by_sdk)), **_options(base_url)
    )
    errors = (module.APIStatusError, module.APITimeoutError, module.APIConnectionError)
    send_raw(client, "POST", path, BODY, forwarded, errors, timeout).close()
    (request,) = by_sdk
    return request


def _assert_same_request(headers: dict[str, str], content: bytes, sdk: httpx2.Request) -> None:
    """The same JSON body and every header the same (``headers``' names lowercase)."""
    assert orjson.loads(content) == orjson.loads(sdk.content) == BODY
    ignored = {"content-length"}  # the SDK's JSON and orjson may escape differently
    assert {k: v for k, v in headers.items() if k not in ignored} == {
        k: v for k, v in sdk.headers.items() if k not in ignored
    }
    assert headers["content-length"] == str(len(content))


@pytest.mark.parametrize(("module", "client_class", "base_url", "path"), SDKS)
@pytest.mark.parametrize("seconds_left", [None, 0.7371])
def test_the_raw_sender_sends_what_the_sdk_sends(
    module: Any, client_class: str, base_url: str, path: str, seconds_left: float | None
) -> None:
    forwarded = _forwarded(module)
    timeout = clipped_timeout(TIMEOUT, seconds_left)
    sdk = _sent_by_sdk(module, client_class, base_url, path, forwarded, timeout)
    by_raw: list[httpx2.Request] = []
    _sender(module, client_class, base_url, _recorder(by_raw)).post(
        path, BODY, forwarded, timeout
    ).close()

    (raw,) = by_raw
    assert (raw.method, str(raw.url)) == (sdk.method, str(sdk.url))
    _assert_same_request(dict(raw.headers.items()), raw.content, sdk)
    assert raw.extensions["timeout"] == sdk.extensions["timeout"]
    assert "x-stainless-retry-count" in raw.headers  # per-call headers are really compared


@pytest.mark.parametrize(("module", "client_class", "base_url", "path"), SDKS)
def test_an_error_status_is_read_and_raised_with_its_body(
    module: Any, client_class: str, base_url: str, path: str
) -> None:
    def refuse(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, content=b'{"error":"slow down"}', headers={"Retry-After": "3"})

    sender = _sender(module, client_class, base_url, _recorder([], refuse))
    with pytest.raises(UpstreamHttpError) as raised:
        sender.post(path, BODY, {})
    assert (raised.value.status, raised.value.body) == (429, b'{"error":"slow down"}')
    assert raised.value.headers["retry-after"] == "3"


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (httpx2.ConnectError("refused"), UpstreamUnreachable),
        (httpx2.ReadTimeout("no first byte"), UpstreamTimeout),
        (httpx2.RemoteProtocolError("dropped"), UpstreamUnreachable),
    ],
)
def test_transport_failures_are_the_providers_errors(
    failure: Exception, raised: type[Exception]
) -> None:
    def fail(_: httpx2.Request) -> httpx2.Response:
        raise failure

    sender = _sender(openai, "OpenAI", "http://upstream.test/v1", _recorder([], fail))
    with pytest.raises(raised):
        sender.post("/chat/completions", BODY, {})


def test_a_success_is_handed_back_unread() -> None:
    chunks = [b"data: one\n\n", b"data: two\n\n"]

    def stream(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=httpx2.ByteStream(b"".join(chunks)))

    sender = _sender(openai, "OpenAI", "http://upstream.test/v1", _recorder([], stream))
    answer = sender.post("/chat/completions", BODY, {})
    assert answer.status == 200
    assert b"".join(answer.iter_bytes()) == b"".join(chunks)


# The hot path's own pool (``direct_pool``: urllib3), against a real HTTP server.


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased; values as sent, UTF-8
    body: bytes
    client_port: int


class Upstream:
    """An HTTP/1.1 server on a free port that records each request and answers with
    ``answer(handler)`` (which writes the whole response itself)."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw_headers = {
                    name.lower(): value.encode("latin-1").decode()
                    for name, value in self.headers.items()
                }
                outer.seen.append(
                    Seen(
                        "POST",
                        self.path,
                        raw_headers,
                        self.rfile.read(length),
                        self.client_address[1],
                    )
                )
                answer(self)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wrap(self, context: ssl.SSLContext) -> None:
        """Serve HTTPS from now on (connections accepted later are wrapped)."""
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _reply(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"content-type": "application/json", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _chunked(chunks: list[bytes], gate: threading.Event | None = None) -> Callable[..., None]:
    """An event stream in HTTP chunks, each its own write; after the first, each waits for
    ``gate`` when one is given (so a test can read the first before the rest exist)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        for number, chunk in enumerate(chunks):
            if number and gate is not None:
                gate.wait(10)
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")

    return answer


@contextmanager
def upstream(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[Upstream]:
    server = Upstream(answer)
    try:
        yield server
    finally:
        server.close()


def _pooled_sender(module: Any, client_class: str, base_url: str) -> RawSender:
    make = getattr(module, client_class)
    options = _options(base_url)
    http = httpx2.Client(timeout=TIMEOUT)
    client = make(http_client=http, **options)
    return RawSender(
        http,
        str(client.base_url),
        sdk_headers(make, options),
        pool=direct_pool(str(client.base_url)),
    )


@pytest.mark.parametrize(
    ("module", "client_class", "base_path", "path"),
    [
        pytest.param(openai, "OpenAI", "/v1", "/chat/completions", id="openai"),
        pytest.param(anthropic, "Anthropic", "", "/v1/messages", id="anthropic"),
    ],
)
@pytest.mark.parametrize("seconds_left", [None, 0.7371])
@pytest.mark.parametrize("headers_from", ["import", "shown"])
def test_the_pooled_sender_sends_what_the_sdk_sends(
    module: Any,
    client_class: str,
    base_path: str,
    path: str,
    seconds_left: float | None,
    headers_from: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ways a worker gets its sender: importing the SDK, or with the headers the
    master had the SDK show in a subprocess (``show_headers``: no SDK client here)."""
    forwarded = _forwarded(module)
    timeout = clipped_timeout(TIMEOUT, seconds_left)
    with upstream(_reply(200, b'{"ok":true}')) as server:
        base_url = server.url + base_path
        sdk = _sent_by_sdk(module, client_class, base_url, path, forwarded, timeout)
        if headers_from == "shown":
            monkeypatch.setattr(sdk_module, "_SHOWN", {})
            lazy = LazySdk(module.__name__, client_class, **_options(base_url))
            show_headers([lazy])
            sender = lazy.sender()
            assert lazy._module is None  # sent without the SDK's client
        else:
            sender = _pooled_sender(module, client_class, base_url)
        answer = sender.post(path, BODY, forwarded, timeout)
        assert answer.read() == b'{"ok":true}'

    (raw,) = server.seen
    assert (raw.method, server.url + raw.path) == (sdk.method, str(sdk.url))
    _assert_same_request(raw.headers, raw.body, sdk)
    assert "x-stainless-retry-count" in raw.headers  # per-call headers are really compared


@pytest.mark.parametrize(
    ("status", "headers"), [(429, {"Retry-After": "3"}), (307, {"Location": "/elsewhere"})]
)
def test_the_pooled_sender_raises_an_error_status_with_its_body(
    status: int, headers: dict[str, str]
) -> None:
    with upstream(_reply(status, b'{"error":"slow down"}', headers)) as server:
        sender = _pooled_sender(openai, "OpenAI", server.url + "/v1")
        with pytest.raises(UpstreamHttpError) as raised:
            sender.post("/chat/completions", BODY, {})
    assert (raised.value.status, raised.value.body) == (status, b'{"error":"slow down"}')
    assert raised.value.headers[next(iter(headers)).lower()] == next(iter(headers.values()))


def test_a_header_sent_twice_comes_joined_as_httpx_gives_it() -> None:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("x-upstream-note", "one")
        handler.send_header("X-Upstream-Note", "two")
        handler.send_header("content-length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    with upstream(answer) as server:
        pooled = _pooled_sender(openai, "OpenAI", server.url + "/v1").post(
            "/chat/completions", BODY, {}
        )
        pooled.read()
        through_httpx = httpx2.post(server.url + "/v1/chat/completions", content=b"{}")
    assert pooled.headers["x-upstream-note"] == "one, two"
    assert through_httpx.headers["x-upstream-note"] == "one, two"


def test_the_pooled_sender_decodes_a_compressed_body_and_reuses_the_connection() -> None:
    body = b'{"id":"chatcmpl-1","choices":[]}'
    with upstream(_reply(200, gzip.compress(body), {"content-encoding": "gzip"})) as server:
        sender = _pooled_sender(openai, "OpenAI", server.url + "/v1")
        assert sender.post("/chat/completions", BODY, {}).read() == body  # as the SDK would
        assert sender.post("/chat/completions", BODY, {}).read() == body
    first, second = server.seen
    assert first.client_port == second.client_port  # read to the end: back in the pool


def test_the_pooled_sender_hands_a_stream_back_chunk_by_chunk_and_reuses_the_connection() -> None:
    chunks = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]
    gate = threading.Event()
    with upstream(_chunked(chunks, gate)) as server:
        sender = _pooled_sender(openai, "OpenAI", server.url + "/v1")
        answer = sender.post("/chat/completions", BODY, {})
        assert (answer.status, answer.content_type) == (200, "text/event-stream")
        received = answer.iter_bytes()
        assert next(received) == chunks[0]  # before the server has written the rest
        gate.set()
        assert list(received) == chunks[1:]
        answer.close()
        again = sender.post("/chat/completions", BODY, {})
        assert b"".join(again.iter_bytes()) == b"".join(chunks)
        again.close()
    first, second = server.seen
    assert first.client_port == second.client_port  # one connection, kept alive


def test_a_stream_closed_early_costs_its_connection_not_the_next_call() -> None:
    chunks = [b"data: one\n\n", b"data: two\n\n"]
    gate = threading.Event()
    with upstream(_chunked(chunks, gate)) as server:
        sender = _pooled_sender(openai, "OpenAI", server.url + "/v1")
        answer = sender.post("/chat/completions", BODY, {})
        assert next(answer.iter_bytes()) == chunks[0]
        answer.close()  # the caller went away mid-stream
        gate.set()
        again = sender.post("/chat/completions", BODY, {})
        assert b"".join(again.iter_bytes()) == b"".join(chunks)
    first, second = server.seen
    assert first.client_port != second.client_port  # the half-read connection was not reused


def test_pooled_transport_failures_are_the_providers_errors() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    with pytest.raises(UpstreamUnreachable):
        _pooled_sender(openai, "OpenAI", refused_url).post("/chat/completions", BODY, {})

    never = threading.Event()

    def stay_silent(_: BaseHTTPRequestHandler) -> None:
        never.wait(10)

    with upstream(stay_silent) as silent:
        sender = _pooled_sender(openai, "OpenAI", silent.url + "/v1")
        with pytest.raises(UpstreamTimeout):
            sender.post("/chat/completions", BODY, {}, clipped_timeout(TIMEOUT, 0.3))
        never.set()

    def hang_up(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    with upstream(hang_up) as rude:
        with pytest.raises(UpstreamUnreachable):
            _pooled_sender(openai, "OpenAI", rude.url + "/v1").post("/chat/completions", BODY, {})


def test_a_stream_that_stops_mid_way_is_a_timeout() -> None:
    chunks = [b"data: one\n\n", b"data: two\n\n"]
    gate = threading.Event()  # never set: the second chunk never comes
    with upstream(_chunked(chunks, gate)) as server:
        sender = _pooled_sender(openai, "OpenAI", server.url + "/v1")
        answer = sender.post("/chat/completions", BODY, {}, clipped_timeout(TIMEOUT, 0.3))
        received = answer.iter_bytes()
        assert next(received) == chunks[0]
        with pytest.raises(UpstreamTimeout):
            next(received)
        answer.close()
        gate.set()


def test_a_proxy_in_the_environment_sends_through_the_sdks_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for variant in (name, name.lower()):
            monkeypatch.delenv(variant, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://egress.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,internal.example")
    assert direct_pool("https://api.openai.com/v1") is None
    assert direct_pool("https://llm.internal.example/v1") is not None  # NO_PROXY
    assert direct_pool("http://127.0.0.1:9000/v1") is not None  # no HTTP_PROXY
    monkeypatch.setenv("ALL_PROXY", "socks5://egress.internal:1080")
    assert direct_pool("http://127.0.0.1:9000/v1") is None

    # End to end, as a worker builds it: the call reaches the proxy, in proxy form.
    monkeypatch.delenv("ALL_PROXY")
    with upstream(_reply(200, b'{"ok":true}')) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        sdk = LazySdk(
            "openai",
            "OpenAI",
            api_key="sk-test",
            base_url="http://upstream.test/v1",
            timeout=TIMEOUT,
        )
        assert sdk.sender().post("/chat/completions", BODY, {}).read() == b'{"ok":true}'
        sdk.close()
    (seen,) = proxy.seen
    assert seen.path == "http://upstream.test/v1/chat/completions"


def test_the_pooled_sender_verifies_tls_as_the_sdks_client_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HTTPS through the pool: a certificate the SDK's httpx client trusts (here through
    SSL_CERT_FILE, as httpx reads it) is trusted; one it does not trust is refused."""
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    with upstream(_reply(200, b'{"ok":true}')) as server:
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(serving)
        server.wrap(serving)
        base_url = server.url.replace("http://127.0.0.1", "https://localhost") + "/v1"

        trusted = tmp_path / "trusted.pem"
        authority.cert_pem.write_to_path(str(trusted))
        monkeypatch.setenv("SSL_CERT_FILE", str(trusted))
        answer = _pooled_sender(openai, "OpenAI", base_url).post("/chat/completions", BODY, {})
        assert answer.read() == b'{"ok":true}'

        stranger = tmp_path / "stranger.pem"
        trustme.CA().cert_pem.write_to_path(str(stranger))
        monkeypatch.setenv("SSL_CERT_FILE", str(stranger))
        with pytest.raises(UpstreamUnreachable):
            _pooled_sender(openai, "OpenAI", base_url).post("/chat/completions", BODY, {})
    assert len(server.seen) == 1  # the refused handshake never reached the handler
