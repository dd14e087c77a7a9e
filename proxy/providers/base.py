"""The provider protocol: send one request upstream, hand back the raw answer.

Providers wrap the official SDK clients (one per provider per process, pooled
connections, timeouts, no SDK retries: the pipeline owns retry policy). They
raise only the three exceptions below.

    UpstreamError
    ├── UpstreamHttpError      the provider answered with a non-2xx status
    ├── UpstreamTimeout        no first byte (or no next chunk) within the deadline
    └── UpstreamUnreachable    connection refused, reset or dropped
        └── UpstreamNotConfigured   the gateway has no key for this provider (never retried)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Protocol

import httpx2


class UpstreamError(Exception):
    pass


class UpstreamHttpError(UpstreamError):
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.headers = headers


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamNotConfigured(UpstreamUnreachable):
    pass


class UpstreamResponse:
    """A 2xx upstream answer whose body has not been read yet."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self._body: bytes | None = None
        self._chunks: Iterator[bytes] | None = None

    def prefetch(self, *, is_stream: bool) -> None:
        """Take the answer far enough to know it arrived: the whole body, or a stream's
        first chunk. A broken answer then fails here, while the call can still be retried.
        Raises UpstreamTimeout or UpstreamUnreachable (the response is closed then).
        """
        if not is_stream:
            self._body = self.read()
            return
        chunks = self.iter_bytes()
        try:
            first = next(chunks, b"")
        except UpstreamError:
            self.close()
            raise
        self._chunks = itertools.chain((first,), chunks)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def read(self) -> bytes:
        if self._body is not None:
            return self._body
        try:
            return self._response.read()
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout("the provider stopped sending its answer") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnreachable("the connection to the provider broke") from exc
        finally:
            self._response.close()

    def iter_bytes(self) -> Iterator[bytes]:
        if self._chunks is not None:
            chunks, self._chunks = self._chunks, None
            yield from chunks
            return
        try:
            yield from self._response.iter_raw()
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout("the provider stopped streaming") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnreachable("the stream from the provider broke") from exc

    def close(self) -> None:
        self._response.close()


class Provider(Protocol):
    name: str

    def send(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        timeout_seconds: float | None = None,
    ) -> UpstreamResponse:
        """POST ``body`` to ``path``; raises an UpstreamError subclass on failure.

        ``timeout_seconds`` caps every timeout phase of this request (what is left of
        the call's deadline); None keeps the provider's configured timeouts.
        """
        ...

    def request(self, method: str, path: str, headers: dict[str, str]) -> UpstreamResponse:
        """A body-less ``method`` (GET, DELETE, POST) on ``path`` (query string included);
        raises an UpstreamError subclass on failure."""
        ...

    def close(self) -> None: ...
