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
    """A 2xx upstream answer whose body has not been read yet.

    Its body comes from one of two HTTP clients (``HttpxBody``: the SDK's own httpx
    client, for every request but the hot path's POST; ``Urllib3Body``: ``RawSender``'s
    pool), each mapping its own failures to UpstreamTimeout / UpstreamUnreachable.
    """

    def __init__(self, status: int, headers: dict[str, str], body: Body) -> None:
        self.status = status
        self.headers = headers
        self._source = body
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
        """The whole body (decoded, as the provider's content-encoding says); closes."""
        if self._body is not None:
            return self._body
        return self._source.read()

    def iter_bytes(self) -> Iterator[bytes]:
        """The body's bytes as they arrive, undecoded."""
        if self._chunks is not None:
            chunks, self._chunks = self._chunks, None
            yield from chunks
            return
        yield from self._source.chunks()

    def close(self) -> None:
        self._source.close()


class Body(Protocol):
    def read(self) -> bytes: ...

    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class HttpxBody:
    """An httpx response's body (the SDK's client)."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    def read(self) -> bytes:
        try:
            return self._response.read()
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout(STOPPED_SENDING) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnreachable(BROKE_SENDING) from exc
        finally:
            self._response.close()

    def chunks(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_raw()
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeout(STOPPED_STREAMING) from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnreachable(BROKE_STREAMING) from exc

    def close(self) -> None:
        self._response.close()


def httpx_answer(response: httpx2.Response) -> UpstreamResponse:
    headers = {k.lower(): v for k, v in response.headers.items()}
    return UpstreamResponse(response.status_code, headers, HttpxBody(response))


STOPPED_SENDING = "the provider stopped sending its answer"
BROKE_SENDING = "the connection to the provider broke"
STOPPED_STREAMING = "the provider stopped streaming"
BROKE_STREAMING = "the stream from the provider broke"


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
