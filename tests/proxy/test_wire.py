"""The hot path's pool reads a response's header block without the ``email`` package
(``proxy.providers.wire``), and gets what ``http.client`` would have given it."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.connection import HTTPConnection
from urllib3.util import SKIP_HEADER

from proxy.providers import wire
from proxy.providers.sdk import direct_pool


def _facts(message: http.client.HTTPMessage) -> dict[str, Any]:
    """Everything of a parsed header block that its readers can see."""
    return {
        "headers": list(message._headers),  # type: ignore[attr-defined]
        "items": message.items(),
        "payload": message.get_payload(),
        "defects": [type(defect) for defect in message.defects],
        "unixfrom": message.get_unixfrom(),
        "multipart": message.is_multipart(),
        "content_type": message.get_content_type(),
        "attributes": sorted(vars(message)),
    }


def _both(block: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    stock = http.client.parse_headers(io.BytesIO(block))
    quick = wire.parse_headers(io.BytesIO(block))
    assert type(quick) is type(stock)
    return _facts(stock), _facts(quick)


NAMES = st.sampled_from(
    ["content-type", "X-Request-Id", "openai-processing-ms", "Set-Cookie", "From", "a", ""]
)
VALUES = st.text(alphabet=st.sampled_from(list("ab 1:;\t\r\xe9,=/\x7f")), max_size=12)
LINES = st.one_of(
    st.builds(lambda name, value: f"{name}:{value}", NAMES, VALUES),  # a field
    st.builds(lambda name, value: f"{name}: {value}", NAMES, VALUES),
    st.builds(lambda name, value: f"{name} : {value}", NAMES, VALUES),  # space before ':'
    st.builds(lambda value: f" {value}", VALUES),  # a folded continuation
    st.builds(lambda value: f"\t{value}", VALUES),
    st.builds(lambda value: f"From {value}", VALUES),  # a Unix "From " line
    VALUES,  # no colon at all
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(LINES, max_size=8),
    newline=st.sampled_from(["\r\n", "\n"]),
    ending=st.sampled_from(["\r\n", "\n", ""]),
    body=st.sampled_from([b"", b"{}", b"rest\r\n"]),
)
def test_quick_parse_gives_what_the_email_parser_gives(
    lines: list[str], newline: str, ending: str, body: bytes
) -> None:
    block = "".join(line + newline for line in lines) + ending
    stock, quick = _both(block.encode("iso-8859-1") + body)
    assert quick == stock


@pytest.mark.parametrize(
    "block",
    [
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"X-A: 1\r\nX-A: 2\r\nx-a:3\r\n\r\n",  # repeated, in order
        b"X-Spaces:   padded  \r\n\r\n",  # leading blanks dropped, trailing kept
        b"X-Tab:\t \tvalue\r\n\r\n",
        b"X-Latin: caf\xe9\r\n\r\n",
        b"X-Folded: one\r\n two\r\n\r\n",  # left to the email parser
        b"Bad Name: x\r\nX-After: y\r\n\r\n",
        b"\r\n",
        b"",
    ],
)
def test_header_blocks_parse_as_http_client_parses_them(block: bytes) -> None:
    stock, quick = _both(block)
    assert quick == stock


def test_http_clients_limits_still_hold() -> None:
    too_many = b"".join(b"X-%d: v\r\n" % n for n in range(http.client._MAXHEADERS + 1))  # type: ignore[attr-defined]
    with pytest.raises(http.client.HTTPException, match="more than"):
        wire.parse_headers(io.BytesIO(too_many + b"\r\n"))
    too_long = b"X-Long: " + b"v" * (http.client._MAXLINE + 1) + b"\r\n\r\n"  # type: ignore[attr-defined]
    with pytest.raises(http.client.LineTooLong):
        wire.parse_headers(io.BytesIO(too_long))


ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Request-Id: req_1\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"X-Folded: first\r\n\tsecond\r\n"
    b"x-ratelimit-remaining-tokens:  149984 \r\n"
    b"Content-Length: 2\r\n"
    b"\r\n"
    b"{}"
)


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with ``ANSWER``, byte for byte: it keeps the connection, or
    with ``_Server.is_closing`` closes it after answering (the answer does not say so)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.wfile.write(ANSWER)
        self.close_connection = self.server.is_closing

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    is_closing = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Canned)
        self.closed = threading.Semaphore(0)  # released as each connection is closed
        self.accepted = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()


@contextmanager
def _canned_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_the_hot_paths_pool_reads_headers_as_urllib3_does() -> None:
    with _canned_server() as server:
        base_url = _url(server)
        pool = direct_pool(base_url + "/v1")
        assert pool is not None and pool.ConnectionCls is wire.Connection
        stock = urllib3.PoolManager().connection_from_url(base_url)
        answers = [
            each.urlopen("POST", "/v1/chat/completions", body=b"{}", retries=False)
            for each in (pool, stock, pool)  # the pool's second call reuses its connection
        ]
        assert [dict(answer.headers.items()) for answer in answers[1:]] == [
            dict(answers[0].headers.items())
        ] * 2
        assert answers[0].headers.getlist("set-cookie") == ["a=1", "b=2"]
        assert answers[0].headers["x-folded"] == "first second"
        assert answers[0].headers["x-ratelimit-remaining-tokens"] == "149984 "
        assert [answer.data for answer in answers] == [b"{}"] * 3
        assert pool.num_connections == 1


def test_readable_now_sees_bytes_waiting_and_a_closed_peer() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        assert not wire.is_readable_now(ours)
        peer.sendall(b"x")
        assert wire.is_readable_now(ours)
        ours.recv(1)
        assert not wire.is_readable_now(ours)
        peer.close()
        assert wire.is_readable_now(ours)


def test_a_connection_the_provider_closed_while_idle_is_not_reused() -> None:
    with _canned_server() as server:
        server.is_closing = True
        pool = direct_pool(_url(server))
        assert pool is not None
        for _ in range(3):
            answer = pool.urlopen("POST", "/v1/chat/completions", body=b"{}", retries=False)
            assert answer.data == b"{}"
            assert server.closed.acquire(timeout=10)  # closed before the next call
        assert server.accepted == 3


def _sent(connection: Any, headers: dict[str, Any]) -> bytes:
    """What ``connection`` sends for a POST with ``headers``, caught before any socket."""
    sent: list[bytes] = []
    connection.send = sent.append
    connection.request("POST", "/v1/chat/completions", body=b"{}", headers=headers)
    return b"".join(sent)


SDK_HEADERS = {
    "accept": "application/json",
    "user-agent": "OpenAI/Python 2.8.1",
    "x-stainless-os": "Linux",
    "authorization": "Bearer sk-bench-0123456789",
    "x-meta": "caf\xe9".encode(),  # a non-ASCII value goes as bytes
}


@pytest.mark.parametrize(
    "headers",
    [
        SDK_HEADERS,
        {**SDK_HEADERS, "x-stainless-retry-count": "0", "content-length": "2"},
        {"User-Agent": SKIP_HEADER, "accept": "text/event-stream"},  # urllib3 skips it
    ],
)
def test_requests_go_out_as_urllib3_sends_them(headers: dict[str, Any]) -> None:
    for _ in range(3):  # the later times from the lines kept
        assert _sent(wire.Connection("127.0.0.1", 1), headers) == _sent(
            HTTPConnection("127.0.0.1", 1), headers
        )


def test_values_that_are_equal_but_encode_apart_are_not_mixed_up() -> None:
    for headers in ({"x-n": 1}, {"x-n": True}, {"x-n": "1"}, {"x-n": b"1"}) * 2:
        assert _sent(wire.Connection("127.0.0.1", 1), headers) == _sent(
            HTTPConnection("127.0.0.1", 1), headers
        )


def test_header_lines_are_kept_once_checked() -> None:
    _sent(wire.Connection("127.0.0.1", 1), SDK_HEADERS)
    assert wire._header_lines[("x-stainless-os", "Linux")] == b"x-stainless-os: Linux"
    for index in range(wire.HEADER_LINES_KEPT + 10):  # per-call values churn, bounded
        _sent(wire.Connection("127.0.0.1", 1), {"x-request": str(index)})
        assert len(wire._header_lines) <= wire.HEADER_LINES_KEPT


@pytest.mark.parametrize(
    ("name", "value"), [("x-bad", "a\r\nb"), ("bad:name", "x"), ("x-bad", "a\nb")]
)
def test_a_bad_header_is_refused_every_time(name: str, value: str) -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            _sent(wire.Connection("127.0.0.1", 1), {name: value})
    assert (name, value) not in wire._header_lines


def test_a_kept_line_is_still_refused_outside_a_request() -> None:
    _sent(wire.Connection("127.0.0.1", 1), SDK_HEADERS)
    assert ("accept", "application/json") in wire._header_lines
    with pytest.raises(http.client.CannotSendHeader):
        wire.Connection("127.0.0.1", 1).putheader("accept", "application/json")
