"""Hostile input: fuzzed bodies and headers of both dialects, and the named nasty cases,
never get a 500, a stack trace or HTML; every refusal is JSON in the caller's dialect,
and every call is recorded exactly once (gunicorn's own header-limit refusals aside,
which never reach the gateway)."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import (
    BODY_READ_TIMEOUT_SECONDS,
    Stack,
    record_counts,
    records_by_client_id,
)
from tests.reliability.traffic import (
    ANTHROPIC_MODEL,
    OPENAI_MODEL,
    Outcome,
    body_for,
    error_shape_problems,
    new_request_id,
    send,
)
from tests.support import Accounts, ProxyServer, seed_accounts, wait_for

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_BODY_BYTES = 4 * 1024 * 1024  # the default, in force on both servers

# -- strategies ------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=16,
)
extra_fields = st.dictionaries(
    st.text(max_size=12).filter(lambda name: not name.startswith("sim_")), json_values, max_size=3
)


def _messages(roles: list[str], content: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(roles) | json_values, "content": content | json_values}
    )
    return st.lists(message | json_values, max_size=4) | json_values


OPENAI_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([OPENAI_MODEL, "gpt-4o", ANTHROPIC_MODEL, "nope", ""]) | json_values,
    "messages": _messages(
        ["user", "system", "assistant", "developer", "tool"], st.text(max_size=60)
    ),
    "max_tokens": st.integers(-3, 64) | json_values,
    "max_completion_tokens": st.integers(-3, 64),
    "stream": st.booleans() | json_values,
    "stream_options": st.just({"include_usage": True}) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "user": st.text(max_size=20) | json_values,
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]) | json_values,
    "tools": json_values,
    "n": st.integers(-1, 2),
}
ANTHROPIC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([ANTHROPIC_MODEL, "claude-sonnet-4-6", OPENAI_MODEL, ""])
    | json_values,
    "messages": _messages(
        ["user", "assistant"],
        st.text(max_size=60)
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)})),
    ),
    "max_tokens": st.integers(-3, 64) | json_values,
    "system": st.text(max_size=60) | json_values,
    "stream": st.booleans() | json_values,
    "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=10)}) | json_values,
    "tools": json_values,
    "temperature": st.floats(-1, 2) | json_values,
}
REQUIRED = {
    "openai": {"model": st.just(OPENAI_MODEL)},
    "anthropic": {"model": st.just(ANTHROPIC_MODEL), "max_tokens": st.just(16)},
}


def bodies(dialect: str) -> st.SearchStrategy[bytes]:
    """Mostly near-valid bodies of ``dialect``, some arbitrary JSON, some arbitrary bytes."""
    fields = OPENAI_FIELDS if dialect == "openai" else ANTHROPIC_FIELDS
    near_valid = st.builds(
        lambda base, fuzzed, extra: {**extra, **base, **fuzzed},
        st.fixed_dictionaries(REQUIRED[dialect]),
        st.fixed_dictionaries({}, optional=fields),
        extra_fields,
    )
    as_json = (near_valid | json_values).map(lambda value: json.dumps(value).encode())
    return as_json | st.binary(max_size=200)


HEADER_NAMES = [
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "content-type",
    "cache-control",
    "user-agent",
    "x-forwarded-for",
    "x-metergate-session-id",
    "x-metergate-end-user",
    "x-metergate-cache-ttl",
    "x-metergate-replay-of",
    "openai-organization",
    "accept",
]
# Framing and hop-by-hop headers are the HTTP server's business, not the gateway's.
NOT_FUZZED = {
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "x-request-id",
}
header_names = st.sampled_from(HEADER_NAMES) | st.from_regex(
    r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}\Z"
).filter(lambda name: name.lower() not in NOT_FUZZED and not name.lower().startswith("proxy-"))
# Any byte a header value may carry on the wire (latin-1 and invalid UTF-8 included).
header_values = st.binary(max_size=80).map(
    lambda raw: bytes(c for c in raw if c == 9 or 32 <= c <= 126 or c >= 128).strip()
)


def headers_with(key: str) -> st.SearchStrategy[dict[str, bytes]]:
    credentials = st.sampled_from(
        [f"Bearer {key}", f"Bearer {key[:-1]}", "Bearer", "Basic abc", f"bearer  {key}", key]
    ).map(str.encode)
    fuzzed = st.dictionaries(header_names.map(str.lower), header_values, max_size=6)
    return st.builds(
        lambda extra, auth: {"authorization": auth, **extra}, fuzzed, credentials | header_values
    )


# -- checks ------------------------------------------------------------------------------


def assert_answer_is_sound(outcome: Outcome) -> None:
    """No 500, no trace, no HTML; a refusal is a JSON error of the caller's dialect."""
    assert outcome.error is None, outcome.error
    assert outcome.status != 500, outcome.text
    assert outcome.status < 500 or outcome.status in (502, 503, 504), outcome.text
    if outcome.status == 200:
        return
    assert not error_shape_problems(outcome), (outcome.status, error_shape_problems(outcome))


@pytest.fixture(scope="module")
def fuzz_key(inproc: ProxyServer) -> Accounts:
    return seed_accounts(inproc.state.engine)


@pytest.fixture()
def http(inproc: ProxyServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=inproc.base_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fuzzed_bodies_never_break_the_gateway_and_are_all_recorded(
    inproc: ProxyServer, http: httpx2.Client, fuzz_key: Accounts, dialect: str
) -> None:
    sent: list[str] = []

    @FUZZ
    @given(body=bodies(dialect))
    def call(body: bytes) -> None:
        outcome = send(http, dialect, fuzz_key.key, body, request_id=new_request_id("fuzz"))
        sent.append(outcome.request_id)
        assert_answer_is_sound(outcome)

    call()
    inproc.flush()
    assert record_counts(inproc.state.engine, sent) == dict.fromkeys(sent, 1)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_fuzzed_headers_never_break_the_gateway_and_are_all_recorded(
    inproc: ProxyServer, http: httpx2.Client, fuzz_key: Accounts, dialect: str
) -> None:
    sent: list[str] = []
    body = body_for(dialect, "hello", max_tokens=8)

    @FUZZ
    @given(headers=headers_with(fuzz_key.key))
    def call(headers: dict[str, bytes]) -> None:
        request_id = new_request_id("fuzz-headers")
        sent_headers: dict[str, Any] = {"x-request-id": request_id, **headers}
        if dialect == "anthropic":
            sent_headers.setdefault("anthropic-version", b"2023-06-01")
        path = "/v1/chat/completions" if dialect == "openai" else "/v1/messages"
        started = time.monotonic()
        response = http.post(path, content=json.dumps(body).encode(), headers=sent_headers)
        outcome = Outcome(
            request_id,
            dialect,
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            response.text,
            time.monotonic() - started,
            is_stream=response.headers.get("content-type", "").startswith("text/event-stream"),
        )
        sent.append(request_id)
        assert_answer_is_sound(outcome)

    call()
    inproc.flush()
    assert record_counts(inproc.state.engine, sent) == dict.fromkeys(sent, 1)


# -- named cases, on both servers --------------------------------------------------------


def _nested(depth: int, leaf: str = '"x"') -> str:
    return "[" * depth + leaf + "]" * depth


def _raw(dialect: str, **replaced: Any) -> bytes:
    return json.dumps(body_for(dialect, "hi", max_tokens=8, **replaced)).encode()


def _with_field(dialect: str, name: str, raw_value: str) -> bytes:
    return _raw(dialect)[:-1] + f', "{name}": {raw_value}}}'.encode()


MANY_MESSAGES = [{"role": "user", "content": "hi"}] * 5000
# (name, dialect, body, extra headers, status, OpenAI error code or None for a 200)
CASES: list[tuple[str, str, bytes, dict[str, bytes], int, str | None]] = [
    ("oversized", "openai", b"{" + b" " * MAX_BODY_BYTES + b"}", {}, 413, "request_too_large"),
    ("nested_100k", "openai", _nested(100_000).encode(), {}, 400, "invalid_json"),
    (
        "nested_field",
        "openai",
        _with_field("openai", "extra", _nested(300)),
        {},
        400,
        "invalid_json",
    ),
    (
        "nested_content",
        "anthropic",
        _with_field("anthropic", "system", _nested(300, '{"type":"text","text":"x"}')),
        {},
        400,
        "invalid_json",
    ),
    ("nested_ok", "openai", _with_field("openai", "extra", _nested(200)), {}, 200, None),
    ("invalid_utf8", "openai", _raw("openai")[:-2] + b'"\xff\xfe"}', {}, 400, "invalid_json"),
    (
        "lone_surrogate",
        "anthropic",
        _with_field("anthropic", "x", '"\\ud800"'),
        {},
        400,
        "invalid_json",
    ),
    ("infinite_number", "openai", _with_field("openai", "seed", "1e400"), {}, 400, "invalid_json"),
    (
        "nul_in_content",
        "openai",
        _raw("openai", messages=[{"role": "user", "content": "a\x00b"}]),
        {},
        200,
        None,
    ),
    ("not_an_object", "anthropic", b'["model"]', {}, 400, "invalid_json"),
    ("empty", "openai", b"", {}, 400, "invalid_json"),
    (
        "many_messages",
        "openai",
        _raw("openai", messages=MANY_MESSAGES),
        {},
        400,
        "too_many_messages",
    ),
    (
        "invalid_utf8_header",
        "openai",
        _raw("openai"),
        {"x-metergate-session-id": b"\xff\xfe\xfd"},
        200,
        None,
    ),
    (
        "large_header",
        "anthropic",
        _raw("anthropic"),
        {"x-metergate-end-user": b"u" * 15_000},
        200,
        None,
    ),
]


@pytest.fixture(params=["werkzeug", "gunicorn"])
def server(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """(base URL, engine) of the in-process proxy or of gunicorn."""
    if request.param == "werkzeug":
        proxy: ProxyServer = request.getfixturevalue("inproc")
        return proxy.base_url, proxy.state.engine
    stack: Stack = request.getfixturevalue("stack")
    return stack.base_url, stack.engine


def test_named_hostile_cases_are_refused_clearly_and_recorded(
    server: tuple[str, Any], rel_engine: Any
) -> None:
    base_url, _ = server
    key = seed_accounts(rel_engine).key
    outcomes: list[tuple[str, Outcome]] = []
    with httpx2.Client(base_url=base_url, timeout=60) as client:
        for name, dialect, body, headers, status, code in CASES:
            outcome = send(client, dialect, key, body, headers=headers)  # type: ignore[arg-type]
            outcomes.append((name, outcome))
            assert outcome.status == status, (name, outcome.text[:300])
            assert_answer_is_sound(outcome)
            if code is not None and dialect == "openai":
                assert outcome.json()["error"]["code"] == code, name
        chunked = send_chunked(client, key, b"{" + b" " * MAX_BODY_BYTES + b"}")
        assert chunked.status == 413, chunked.text[:300]
        outcomes.append(("oversized_chunked", chunked))
    ids = [outcome.request_id for _, outcome in outcomes]
    wait_for(lambda: len(record_counts(rel_engine, ids)) == len(ids), timeout=30)
    assert set(record_counts(rel_engine, ids).values()) == {1}


def send_chunked(client: httpx2.Client, key: str, body: bytes) -> Outcome:
    """A body without Content-Length (chunked transfer encoding)."""
    request_id = new_request_id("chunked")

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        content=pieces(),
        headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
    )
    return Outcome(
        request_id,
        "openai",
        response.status_code,
        {k.lower(): v for k, v in response.headers.items()},
        response.text,
        time.monotonic() - started,
    )


# -- what gunicorn refuses itself ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "headers", "path", "status", "code"),
    [
        (
            "header_too_large",
            {"x-metergate-end-user": "u" * 17_000},
            "",
            431,
            "request_header_fields_too_large",
        ),
        (
            "too_many_headers",
            {f"x-h{n}": "v" for n in range(250)},
            "",
            431,
            "request_header_fields_too_large",
        ),
        ("request_line_too_long", {}, "?" + "a" * 9000, 414, "request_line_too_long"),
    ],
)
def test_gunicorn_refuses_oversized_headers_with_a_json_4xx(
    stack: Stack, name: str, headers: dict[str, str], path: str, status: int, code: str
) -> None:
    key = seed_accounts(stack.engine).key
    request_id = new_request_id(name)
    response = httpx2.post(
        stack.base_url + "/v1/chat/completions" + path,
        json=body_for("openai", "hi"),
        headers={"authorization": f"Bearer {key}", "x-request-id": request_id, **headers},
        timeout=30,
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    # Refused before the gateway saw it: no record (the gunicorn log has a warning line).
    assert records_by_client_id(stack.engine, [request_id]) == {}
    healthy = httpx2.get(stack.base_url + "/healthz", timeout=10)
    assert healthy.status_code == 200


# -- slow-drip bodies ----------------------------------------------------------------------


def drip(port: int, key: str, request_id: str, *, chunked: bool) -> tuple[float, int, bytes]:
    """Send the headers, then one body byte every quarter second until the server
    answers; (seconds until the answer, its status, its body)."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nx-request-id: {request_id}\r\n"
        "Content-Type: application/json\r\n"
    )
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: 1000\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while time.monotonic() - started < 30:
            readable, _, _ = select.select([sock], [], [], 0.25)
            if readable:
                break
            try:
                sock.sendall(b"1\r\n{\r\n" if chunked else b"{")
            except OSError:  # the server stopped reading: its answer is on the way
                break
        elapsed = time.monotonic() - started
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    status_line, _, rest = answer.partition(b"\r\n")
    return elapsed, int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_slow_drip_bodies_are_cut_off_with_408(server: tuple[str, Any], rel_engine: Any) -> None:
    base_url, _ = server
    port = int(base_url.rsplit(":", 1)[1])
    key = seed_accounts(rel_engine).key
    ids = [new_request_id("drip"), new_request_id("drip-chunked")]
    results = []
    for request_id, chunked in zip(ids, (False, True), strict=True):
        results.append(drip(port, key, request_id, chunked=chunked))
    for elapsed, status, body in results:
        assert status == 408, body
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert BODY_READ_TIMEOUT_SECONDS <= elapsed < BODY_READ_TIMEOUT_SECONDS + 3
    records = wait_for(
        lambda: (found := records_by_client_id(rel_engine, ids)) and len(found) == 2 and found
    )
    assert {r.status for r in records.values()} == {408}
