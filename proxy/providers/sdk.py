"""Both providers' SDKs share one client core; this drives it for raw pass-through."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from proxy.providers.base import (
    BROKE_SENDING,
    BROKE_STREAMING,
    STOPPED_SENDING,
    STOPPED_STREAMING,
    UpstreamHttpError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
    httpx_answer,
)
from proxy.providers.wire import use_quick_connections

RAW_STREAM = {"X-Stainless-Raw-Response": "stream"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SdkHeaders:
    """What the hot path needs of an SDK client: its base URL, the headers it sends on
    every request and the names of those it sets per call (``sdk_headers``)."""

    base_url: str
    headers: dict[str, str]
    per_call: frozenset[str]


# Headers shown by the SDKs in a subprocess (``show_headers``), by client spec (``LazySdk.spec``).
# The master fills it before it forks: a worker inherits it and need not import an SDK
# to call a provider (``anthropic`` alone holds ~40 MiB, ``openai`` ~20 MiB).
_SHOWN: dict[str, SdkHeaders] = {}
SHOW_TIMEOUT_SECONDS = 60.0


class LazySdk:
    """A provider's SDK client, made on first use: a process that never calls a provider
    never imports its SDK (``anthropic`` alone holds ~40 MiB and takes 0.5-2 s to import).

    The client is ``module.<client_class>(http_client=..., **options)``, given the
    httpx client the SDK would make for itself (``module.DefaultHttpxClient``) so that
    ``sender`` (the hot path's ``RawSender``) shares its connection pool. ``get`` also
    gives the module's (APIStatusError, APITimeoutError, APIConnectionError), as
    ``send_raw`` (every other request) takes them.
    """

    def __init__(self, module: str, client_class: str, **options: Any) -> None:
        self._module_name = module
        self._client_class = client_class
        self._options = options
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._client: Any = None
        self._sender: RawSender | None = None

    def get(self) -> tuple[Any, tuple[type[Exception], type[Exception], type[Exception]]]:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    started = time.perf_counter()
                    imported = importlib.import_module(self._module_name)
                    make = getattr(imported, self._client_class)
                    # The SDK's own default httpx client, as it would make for itself; given
                    # explicitly so the raw sender shares its connection pool.
                    http = imported.DefaultHttpxClient(
                        base_url=self._options["base_url"], timeout=self._options["timeout"]
                    )
                    client = make(http_client=http, **self._options)
                    base_url = str(client.base_url)
                    if self._sender is None:
                        self._sender = RawSender(
                            http,
                            base_url,
                            sdk_headers(make, self._options),
                            pool=direct_pool(base_url),
                        )
                        self._log_sender("import")
                    self._module, self._client = imported, client
                    log.info(
                        "event=sdk_loaded sdk=%s seconds=%.2f",
                        self._module_name,
                        time.perf_counter() - started,
                    )
        module = self._module
        assert module is not None
        return self._client, (  # the SDKs' own exception classes
            module.APIStatusError,
            module.APITimeoutError,
            module.APIConnectionError,
        )

    def sender(self) -> RawSender:
        """The hot path's POST: the SDK's headers and connection pool, none of its
        per-call layers (``RawSender``). With the headers shown in a subprocess
        (``show_headers``, in the master) it needs no SDK import, unless the environment
        routes the provider through a proxy (then it sends on the SDK's httpx client)."""
        if self._sender is None:
            shown = _SHOWN.get(self.spec)
            pool = direct_pool(shown.base_url) if shown is not None else None
            if shown is not None and pool is not None:
                with self._lock:
                    if self._sender is None:
                        self._sender = RawSender(
                            None,
                            shown.base_url,
                            (shown.headers, shown.per_call),
                            pool=pool,
                            timeout=self._options["timeout"],
                        )
                        self._log_sender("shown")
            else:
                self.get()
        assert self._sender is not None
        return self._sender

    @property
    def spec(self) -> str:
        """The client's module, class and options as JSON (its timeout as four numbers)."""
        options = {
            name: [value.connect, value.read, value.write, value.pool]
            if isinstance(value, httpx2.Timeout)
            else value
            for name, value in self._options.items()
        }
        return json.dumps(
            [self._module_name, self._client_class, options], sort_keys=True, default=str
        )

    def _log_sender(self, source: str) -> None:
        log.info("event=upstream_sender_ready sdk=%s headers=%s", self._module_name, source)

    def module(self) -> ModuleType:
        self.get()
        assert self._module is not None
        return self._module

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def show_headers(sdks: Sequence[LazySdk]) -> None:
    """Have each SDK show the headers its client sends (``sdk_headers``), in one
    subprocess, and keep them (``_SHOWN``) for ``LazySdk.sender``: called in the master,
    so no worker imports an SDK for the hot path. The SDK is the same one the workers
    would import, on the same interpreter and platform, so the headers are the ones a
    worker's own import would give. A failure is logged, and the workers import as
    before."""
    specs = [spec for spec in dict.fromkeys(sdk.spec for sdk in sdks) if spec not in _SHOWN]
    if not specs:
        return
    started = time.perf_counter()
    try:
        shown = subprocess.run(
            [sys.executable, "-c", "from proxy.providers.sdk import show_main; show_main()"],
            input=json.dumps(specs).encode(),
            capture_output=True,
            timeout=SHOW_TIMEOUT_SECONDS,
            check=True,
        )
        found = json.loads(shown.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        stderr = getattr(exc, "stderr", None) or b""
        log.warning("event=sdk_headers_not_shown error=%r detail=%r", exc, stderr.decode()[-500:])
        return
    for spec, (base_url, headers, per_call) in zip(specs, found, strict=True):
        _SHOWN[spec] = SdkHeaders(base_url, headers, frozenset(per_call))
    log.info(
        "event=sdk_headers_shown count=%d seconds=%.2f", len(specs), time.perf_counter() - started
    )


def _show(spec: str) -> tuple[str, dict[str, str], list[str]]:
    """In the subprocess: make the client ``spec`` describes and capture its headers."""
    module_name, client_class, options = json.loads(spec)
    module = importlib.import_module(module_name)
    make = getattr(module, client_class)
    if isinstance(options.get("timeout"), list):  # an httpx Timeout, as ``spec`` wrote it
        connect, read, write, pool = options["timeout"]
        options["timeout"] = httpx2.Timeout(connect=connect, read=read, write=write, pool=pool)
    base_url = str(make(**options).base_url)
    headers, per_call = sdk_headers(make, options)
    return base_url, headers, sorted(per_call)


def send_raw(
    client: Any,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    errors: tuple[type[Exception], type[Exception], type[Exception]],
    timeout: httpx2.Timeout | None = None,
) -> UpstreamResponse:
    """Send through an SDK client and return the unread 2xx response.

    ``errors`` is the SDK's (APIStatusError, APITimeoutError, APIConnectionError).
    ``X-Stainless-Raw-Response: stream`` makes the SDK hand back the raw response
    without reading it, so bodies and SSE bytes reach the caller unchanged.
    ``timeout`` replaces the client's own for this one request.
    """
    status_error, timeout_error, connection_error = errors
    options: dict[str, Any] = {"headers": {**headers, **RAW_STREAM}}
    if timeout is not None:
        options["timeout"] = timeout
    try:
        if method == "GET":
            response = client.get(path, cast_to=httpx2.Response, options=options)
        elif method == "DELETE":
            response = client.delete(path, cast_to=httpx2.Response, options=options)
        else:
            response = client.post(path, cast_to=httpx2.Response, body=body, options=options)
    except status_error as exc:
        raw: httpx2.Response = exc.response  # type: ignore[attr-defined]
        raise _status_error(raw, raw.content) from exc
    except timeout_error as exc:
        raise _timed_out() from exc
    except connection_error as exc:
        raise _unreachable() from exc
    return httpx_answer(response)


def _status_error(response: httpx2.Response, content: bytes) -> UpstreamHttpError:
    return UpstreamHttpError(
        response.status_code, content, {k.lower(): v for k, v in response.headers.items()}
    )


_TIMED_OUT = "the provider did not answer in time"
_UNREACHABLE = "the provider could not be reached"


def _timed_out() -> UpstreamTimeout:
    return UpstreamTimeout(_TIMED_OUT)


def _unreachable() -> UpstreamUnreachable:
    return UpstreamUnreachable(_UNREACHABLE)


# Headers the SDKs set per request, from the request's options; the rest are the client's.
PER_CALL_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "x-stainless-retry-count",
        "x-stainless-read-timeout",
        "x-stainless-timeout",
    }
)
_PROBE_URL = "/metergate-probe"


def sdk_headers(
    make: Callable[..., Any], options: dict[str, Any]
) -> tuple[dict[str, str], frozenset[str]]:
    """The headers an SDK client made with ``options`` sends on every request (auth,
    version, user agent, its platform headers; ``X-Stainless-Raw-Response: stream``, as
    ``send_raw`` asks), and the names of those it sets per call. Built by the SDK itself:
    one request sent through its own request path to an in-memory transport."""
    seen: list[httpx2.Request] = []

    def keep(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=b"{}")

    with httpx2.Client(transport=httpx2.MockTransport(keep)) as http:
        probe = make(http_client=http, **options)
        probe.post(
            _PROBE_URL, cast_to=httpx2.Response, body={}, options={"headers": dict(RAW_STREAM)}
        ).close()
    (request,) = seen
    every = dict(request.headers.items())
    kept = {name: value for name, value in every.items() if name not in PER_CALL_HEADERS}
    return kept, frozenset(every) & PER_CALL_HEADERS


# Idle connections a pool keeps per provider, as the SDKs' httpx clients do (more may
# be open at once; those beyond it close when their call ends).
POOL_SIZE = 1000
STREAM_READ_BYTES = 65536


def direct_pool(base_url: str) -> urllib3.HTTPConnectionPool | None:
    """A urllib3 connection pool to ``base_url``'s host, trusting what the SDK's httpx
    client trusts (``httpx2.create_ssl_context``: certifi, or SSL_CERT_FILE / _DIR).

    None when the environment routes that host through a proxy (HTTP_PROXY, HTTPS_PROXY,
    ALL_PROXY, less NO_PROXY), which the SDK's httpx client honours: ``RawSender`` then
    sends on that client instead.
    """
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
        parts.hostname or ""
    ):
        return None
    manager = urllib3.PoolManager(
        num_pools=1, maxsize=POOL_SIZE, block=False, ssl_context=httpx2.create_ssl_context()
    )
    return use_quick_connections(manager.connection_from_url(base_url))


class RawSender:
    """POST a JSON body to a provider as its SDK would, without the SDK's per-call layers.

    The profile of a worker under load put the SDK's own request path (options models,
    URL and header merging, its retry and auth wrappers) at more of the upstream call's
    CPU than the HTTP exchange itself. This sends the same request: the SDK client's
    base URL, the headers it sends on every request (``sdk_headers``), and the few it
    sets per call (the timeout it was given, and a retry count of 0: the gateway
    retries, the SDK never does). ``tests/proxy/test_raw_sender.py`` checks the requests
    are the same as the SDK's own, for both SDKs. Errors are the ones ``send_raw`` raises.

    The exchange goes through ``pool`` (``direct_pool``: urllib3): per call it costs
    about two thirds of the CPU of httpx's, and reading a streamed answer about half, a
    chunk at a time (``tests/benchmarks/clients.py``). Without a pool (a proxy in the
    environment, or tests' in-memory transports) it goes through the SDK's httpx client.
    It follows no redirect: a 3xx is an error status, as a 4xx is.
    """

    def __init__(
        self,
        http: httpx2.Client | None,
        base_url: str,
        headers: tuple[dict[str, str], frozenset[str]],
        *,
        pool: urllib3.HTTPConnectionPool | None = None,
        timeout: httpx2.Timeout | None = None,
    ) -> None:
        if pool is None and http is None:
            raise ValueError("RawSender needs a connection pool or an httpx client")
        self._http = http
        self._base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._headers, per_call = headers
        default = timeout if timeout is not None else http.timeout if http is not None else None
        if default is None:
            raise ValueError("RawSender needs a timeout (or the httpx client's)")
        self._default_timeout: httpx2.Timeout = default
        self._is_timeout_sent = "x-stainless-timeout" in per_call
        self._pool = pool
        self._path_prefix = urlsplit(self._base_url).path
        self._default_pool_timeout = _pool_timeout(default)

    def post(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: httpx2.Timeout | None = None,
    ) -> UpstreamResponse:
        used = timeout if timeout is not None else self._default_timeout
        sent = {**self._headers, **headers}
        sent["x-stainless-retry-count"] = "0"
        if used.read is not None:
            sent["x-stainless-read-timeout"] = str(used.read)
        if self._is_timeout_sent:  # anthropic's: the request's own timeout, if it had one
            sent["x-stainless-timeout"] = str(timeout.read) if timeout is not None else "NOT_GIVEN"
        if self._pool is not None:
            pool_timeout = self._default_pool_timeout if timeout is None else _pool_timeout(used)
            return self._post_pooled(self._pool, path, orjson.dumps(body), sent, pool_timeout)
        assert self._http is not None  # no pool: made with the SDK's client
        request = self._http.build_request(
            "POST",
            self._base_url + path.lstrip("/"),
            content=orjson.dumps(body),
            headers=httpx2.Headers(sent, encoding="utf-8"),  # as the anthropic SDK encodes
            timeout=used,
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            raise _timed_out() from exc
        except httpx2.HTTPError as exc:
            raise _unreachable() from exc
        if response.status_code >= 400:
            try:
                content = response.read()
            except httpx2.HTTPError as exc:
                raise _unreachable() from exc
            finally:
                response.close()
            raise _status_error(response, content)
        return httpx_answer(response)

    def _post_pooled(
        self,
        pool: urllib3.HTTPConnectionPool,
        path: str,
        content: bytes,
        headers: dict[str, str],
        timeout: urllib3.Timeout,
    ) -> UpstreamResponse:
        # Header values as the SDKs send them, UTF-8; http.client would encode a str as
        # latin-1, so a non-ASCII value goes as bytes (which it sends as they are).
        encoded = {
            name: value if value.isascii() else value.encode() for name, value in headers.items()
        }
        with _urllib3_failures(_TIMED_OUT, _UNREACHABLE):
            response = pool.urlopen(
                "POST",
                self._path_prefix + path.lstrip("/"),
                body=content,
                headers=encoded,  # type: ignore[arg-type]  # bytes values: see above
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=False,
                decode_content=False,
            )
        answer = UpstreamResponse(
            response.status,
            # A header sent more than once comes as one value, joined, as httpx gives it.
            {name.lower(): value for name, value in response.headers.itermerged()},
            Urllib3Body(response),
        )
        if response.status >= 300:
            raise UpstreamHttpError(answer.status, answer.read(), answer.headers)
        return answer


def _pool_timeout(timeout: httpx2.Timeout) -> urllib3.Timeout:
    """httpx's connect and read timeouts (its write and pool phases have no match: the
    pool never makes a call wait for a connection, and a send blocks on a socket with
    the connect timeout)."""
    return urllib3.Timeout(connect=timeout.connect, read=timeout.read)


@contextmanager
def _urllib3_failures(timed_out: str, broken: str) -> Iterator[None]:
    """urllib3's failures as the provider errors: a timeout, or anything else that
    broke the exchange (refused, reset, dropped, TLS)."""
    try:
        yield
    except NewConnectionError as exc:  # before its base class, ConnectTimeoutError
        raise UpstreamUnreachable(broken) from exc
    except Urllib3Timeout as exc:
        raise UpstreamTimeout(timed_out) from exc
    except (Urllib3Error, OSError) as exc:
        raise UpstreamUnreachable(broken) from exc


class Urllib3Body:
    """A urllib3 response's body. Its connection goes back to the pool once the body is
    read to the end; closed early (a caller gone mid-stream), the connection closes."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def read(self) -> bytes:
        try:
            with _urllib3_failures(STOPPED_SENDING, BROKE_SENDING):
                return self._response.read(decode_content=True)
        finally:
            self.close()

    def chunks(self) -> Iterator[bytes]:
        response = self._response
        with _urllib3_failures(STOPPED_STREAMING, BROKE_STREAMING):
            if response.chunked:  # each chunk as it comes, as the provider framed them
                yield from response.read_chunked(decode_content=False)
            else:
                while chunk := response.read1(STREAM_READ_BYTES, decode_content=False):
                    yield chunk

    def close(self) -> None:
        self._response.close()  # a no-op for a connection already back in the pool
        self._response.release_conn()


def timeout_for(connect: float, first_byte: float, read: float) -> httpx2.Timeout:
    return httpx2.Timeout(connect=connect, read=max(first_byte, read), write=30.0, pool=connect)


def clipped_timeout(timeout: httpx2.Timeout, limit_seconds: float | None) -> httpx2.Timeout | None:
    """``timeout`` with every phase cut to ``limit_seconds`` (what is left of the call's
    deadline); None when there is no limit, so the client's own timeout applies."""
    if limit_seconds is None:
        return None
    limit = max(limit_seconds, 0.001)

    def clip(value: float | None) -> float:
        return limit if value is None else min(value, limit)

    return httpx2.Timeout(
        connect=clip(timeout.connect),
        read=clip(timeout.read),
        write=clip(timeout.write),
        pool=clip(timeout.pool),
    )


def show_main() -> None:
    """``show_headers``'s subprocess: client specs in, their headers out (JSON)."""
    json.dump([_show(spec) for spec in json.load(sys.stdin)], sys.stdout)
