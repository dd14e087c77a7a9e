"""The hot path's upstream POST (``RawSender``) sends what the SDK itself would send.

Each SDK's own request path (``send_raw``: ``client.post``) and the raw sender send the
same call to an in-memory transport; the requests must match: method, URL, every header
(auth, version, user agent, platform headers, the per-call timeout and retry headers,
the caller's forwarded headers), the JSON body and the timeout. And the raw sender's
failures are the ones ``send_raw`` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from proxy.providers.base import UpstreamHttpError, UpstreamTimeout, UpstreamUnreachable
from proxy.providers.sdk import RawSender, clipped_timeout, sdk_headers, send_raw, timeout_for

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


@pytest.mark.parametrize(("module", "client_class", "base_url", "path"), SDKS)
@pytest.mark.parametrize("seconds_left", [None, 0.7371])
def test_the_raw_sender_sends_what_the_sdk_sends(
    module: Any, client_class: str, base_url: str, path: str, seconds_left: float | None
) -> None:
    forwarded = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    if module is anthropic:
        forwarded["anthropic-beta"] = "prompt-caching-2024-07-31 \u00cf"  # non-ASCII: UTF-8
    timeout = clipped_timeout(TIMEOUT, seconds_left)
    by_sdk: list[httpx2.Request] = []
    client = getattr(module, client_class)(
        http_client=httpx2.Client(transport=_recorder(by_sdk)), **_options(base_url)
    )
    errors = (module.APIStatusError, module.APITimeoutError, module.APIConnectionError)
    send_raw(client, "POST", path, BODY, forwarded, errors, timeout).close()
    by_raw: list[httpx2.Request] = []
    _sender(module, client_class, base_url, _recorder(by_raw)).post(
        path, BODY, forwarded, timeout
    ).close()

    (sdk,), (raw,) = by_sdk, by_raw
    assert (raw.method, str(raw.url)) == (sdk.method, str(sdk.url))
    assert orjson.loads(raw.content) == orjson.loads(sdk.content) == BODY
    ignored = {"content-length"}  # the SDK's JSON and orjson may escape differently
    assert {k: v for k, v in raw.headers.items() if k not in ignored} == {
        k: v for k, v in sdk.headers.items() if k not in ignored
    }
    assert raw.headers["content-length"] == str(len(raw.content))
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
