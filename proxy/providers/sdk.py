"""Both providers' SDKs share one client core; this drives it for raw pass-through."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import httpx2

from proxy.providers.base import (
    UpstreamHttpError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

RAW_STREAM = {"X-Stainless-Raw-Response": "stream"}
log = logging.getLogger(__name__)


class LazySdk:
    """A provider's SDK client, made on first use: a process that never calls a provider
    never imports its SDK (``anthropic`` alone holds ~40 MiB and takes 0.5-2 s to import).

    The client is ``module.<client_class>(**options)``; ``get`` also gives the module's
    (APIStatusError, APITimeoutError, APIConnectionError), as ``send_raw`` takes them.
    """

    def __init__(self, module: str, client_class: str, **options: Any) -> None:
        self._module_name = module
        self._make: Callable[[ModuleType], Any] = lambda sdk: getattr(sdk, client_class)(**options)
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._client: Any = None

    def get(self) -> tuple[Any, tuple[type[Exception], type[Exception], type[Exception]]]:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    started = time.perf_counter()
                    imported = importlib.import_module(self._module_name)
                    self._module, self._client = imported, self._make(imported)
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

    def module(self) -> ModuleType:
        self.get()
        assert self._module is not None
        return self._module

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


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
        raise UpstreamHttpError(
            raw.status_code, raw.content, {k.lower(): v for k, v in raw.headers.items()}
        ) from exc
    except timeout_error as exc:
        raise UpstreamTimeout("the provider did not answer in time") from exc
    except connection_error as exc:
        raise UpstreamUnreachable("the provider could not be reached") from exc
    return UpstreamResponse(response)


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
