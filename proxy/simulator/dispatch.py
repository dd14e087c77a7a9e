"""The one request pipeline every simulated API endpoint goes through.

Order, written once: read and record the request -> count it -> pick its fault ->
wait the latency (plus the `slow` delay) -> inject the fault, or run the handler and
write its reply (streams frame by frame with the token delay; `truncate` cuts the
reply in half and closes the connection). Handler errors (`SimError`) are rendered in
the endpoint's dialect. A client that disconnects mid-answer ends the request quietly.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from .errors import Dialect, SimError, render_error
from .faults import ANSWER_FAULTS, STATUS_FAULTS, Fault, FaultPlan, resolve
from .ratelimit import anthropic_headers, openai_headers
from .reply import Call, Handler, JsonReply, StreamReply
from .state import STATE_KEY, RecordedRequest, SimulatorState

HANG_POLL_SECONDS: Final = 0.5
_BAD_JSON: Final = {
    Dialect.OPENAI: "We could not parse the JSON body of your request. (HINT: This likely "
    "means you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
    "payload, but what was sent was not valid JSON.)",
    Dialect.ANTHROPIC: "There was an error parsing the body of your request as JSON.",
}
_STATUS_MESSAGES: Final[dict[Dialect, dict[int, str]]] = {
    Dialect.OPENAI: {
        500: "The server had an error while processing your request. Sorry about that!",
        503: "The server is overloaded or not ready yet.",
        529: "The engine is currently overloaded, please try again later.",
    },
    Dialect.ANTHROPIC: {
        500: "Internal server error",
        503: "Service unavailable",
        529: "Overloaded",
    },
}
_GARBAGE: Final = {
    Dialect.OPENAI: b'{"id": "chatcmpl-',
    Dialect.ANTHROPIC: b'{"id": "msg_01',
}
_GARBAGE_STREAM: Final = {
    Dialect.OPENAI: b'data: {"id": "chatcmpl-\n\n',
    Dialect.ANTHROPIC: b'event: message_start\ndata: {"type": "message_start", "message": {"id\n\n',
}
_HTML: Final = b"<html><head><title>502 Bad Gateway</title></head><body>upstream</body></html>"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A simulated API route: `path` is the route template and the stats key."""

    method: str
    path: str
    handler: Handler
    dialect: Dialect


async def serve(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """Answer `request` for `endpoint` (see module docstring for the order of steps)."""
    state = request.app[STATE_KEY]
    started = time.monotonic()
    body, body_error = await _read_body(request, endpoint.dialect)
    model = body.get("model")
    model = model if isinstance(model, str) else None
    recorded = body if body_error is None else body_error[1]
    state.requests.append(
        RecordedRequest(request.method, request.path, request.headers, recorded, time.time())
    )
    state.stats.count(endpoint.path, model)
    state.stats.in_flight += 1
    try:
        return await _answer(request, endpoint, state, body, body_error, model, started)
    finally:
        state.stats.in_flight -= 1


async def _read_body(
    request: web.Request, dialect: Dialect
) -> tuple[dict[str, Any], tuple[SimError, Any] | None]:
    """(parsed JSON object or {}, None), or for a body that is not a JSON object
    ({}, (the error to answer, what to record: the raw text or the parsed value))."""
    if not request.body_exists:
        return {}, None
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}, (SimError(400, _BAD_JSON[dialect]), raw.decode("utf-8", "replace"))
    if not isinstance(body, dict):
        return {}, (SimError(400, "The request body must be a JSON object."), body)
    return body, None


async def _answer(
    request: web.Request,
    endpoint: Endpoint,
    state: SimulatorState,
    body: dict[str, Any],
    body_error: tuple[SimError, Any] | None,
    model: str | None,
    started: float,
) -> web.StreamResponse:
    dialect = endpoint.dialect
    request_id = "req_" + random.randbytes(12).hex()
    headers = request.headers
    try:
        plan = resolve(state.faults, headers, body, endpoint.path, model)
        latency_ms = _milliseconds(headers.get("x-sim-latency-ms"), state.config.latency_ms)
        delay_ms = _milliseconds(headers.get("x-sim-token-delay-ms"), state.config.token_delay_ms)
    except ValueError as exc:
        return _error_response(dialect, SimError(400, f"simulator: {exc}"), request_id)
    if plan is not None:
        state.stats.faults[plan.fault.value] += 1
        if plan.fault is Fault.SLOW:
            latency_ms += plan.delay_ms
    if latency_ms > 0:
        await asyncio.sleep(latency_ms / 1000)
    if plan is not None and plan.fault not in ANSWER_FAULTS:
        return await _inject(request, dialect, plan, request_id, body.get("stream") is True)
    if body_error is not None:
        return _error_response(dialect, body_error[0], request_id)
    try:
        reply = endpoint.handler(
            Call(
                state,
                body,
                request.match_info,
                plan.fault if plan is not None else None,
                dict(request.query),
            )
        )
    except SimError as error:
        return _error_response(dialect, error, request_id)
    out = _success_headers(dialect, state, request_id, reply.tokens, started)
    is_truncated = plan is not None and plan.fault is Fault.TRUNCATE
    if isinstance(reply, StreamReply):
        return await _write_stream(request, reply, out, delay_ms, is_truncated)
    out["Content-Type"] = "application/json"
    if is_truncated:
        return await _write_truncated(request, reply, out)
    return web.Response(body=reply.payload, status=reply.status, headers=out)


def _milliseconds(raw: str | None, default: float) -> float:
    """A non-negative millisecond override from a header; ValueError when malformed."""
    if raw is None:
        return default
    value = float(raw)
    if not 0 <= value < math.inf:
        raise ValueError(f"expected a non-negative number of milliseconds, got {raw!r}")
    return value


def _success_headers(
    dialect: Dialect, state: SimulatorState, request_id: str, tokens: int, started: float
) -> dict[str, str]:
    config = state.config
    if dialect is Dialect.ANTHROPIC:
        limits = anthropic_headers(
            state.anthropic_rate, config.requests_per_minute, config.tokens_per_minute, tokens
        )
        return {"request-id": request_id, **limits}
    limits = openai_headers(
        state.openai_rate, config.requests_per_minute, config.tokens_per_minute, tokens
    )
    return {
        "x-request-id": request_id,
        "openai-processing-ms": str(int((time.monotonic() - started) * 1000)),
        "openai-version": "2020-10-01",
        **limits,
    }


def _error_response(
    dialect: Dialect, error: SimError, request_id: str, extra: dict[str, str] | None = None
) -> web.Response:
    id_header = "request-id" if dialect is Dialect.ANTHROPIC else "x-request-id"
    headers = {"Content-Type": "application/json", id_header: request_id, **error.headers}
    if extra:
        headers.update(extra)
    return web.Response(
        body=render_error(dialect, error, request_id), status=error.status, headers=headers
    )


async def _inject(
    request: web.Request,
    dialect: Dialect,
    plan: FaultPlan,
    request_id: str,
    is_stream: bool,
) -> web.StreamResponse:
    """Answer with the fault itself: an error status, a broken body or a broken
    connection. Garbage for a stream request is a broken SSE frame."""
    fault = plan.fault
    if fault in STATUS_FAULTS:
        return _error_response(dialect, _status_error(dialect, plan), request_id)
    if fault is Fault.GARBAGE and is_stream:
        headers = {"Content-Type": "text/event-stream; charset=utf-8"}
        return web.Response(body=_GARBAGE_STREAM[dialect], headers=headers)
    if fault is Fault.GARBAGE:
        return web.Response(body=_GARBAGE[dialect], headers={"Content-Type": "application/json"})
    if fault is Fault.WRONG_CONTENT_TYPE:
        return web.Response(body=_HTML, headers={"Content-Type": "text/html; charset=utf-8"})
    if fault is Fault.HANG:
        await _wait_for_disconnect(request)
    _close_connection(request)
    # The connection is gone; aiohttp treats the failed write of this response as a
    # client disconnect and sends nothing.
    return web.Response()


def _status_error(dialect: Dialect, plan: FaultPlan) -> SimError:
    status = int(plan.fault.value)
    if status != 429:
        return SimError(status, _STATUS_MESSAGES[dialect][status])
    seconds = plan.retry_after_seconds
    shown = f"{seconds:g}"
    if dialect is Dialect.ANTHROPIC:
        message = "Number of requests has exceeded your per-minute rate limit."
    else:
        message = f"Rate limit reached for requests. Please try again in {shown}s."
    headers = {"retry-after": shown, "retry-after-ms": str(int(seconds * 1000))}
    return SimError(
        429, message, error_type="requests", code="rate_limit_exceeded", headers=headers
    )


async def _wait_for_disconnect(request: web.Request) -> None:
    """Return once the client has gone (or be cancelled by the server on disconnect)."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(HANG_POLL_SECONDS)


def _close_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _write_stream(
    request: web.Request,
    reply: StreamReply,
    headers: dict[str, str],
    delay_ms: float,
    is_truncated: bool,
) -> web.StreamResponse:
    headers["Content-Type"] = "text/event-stream; charset=utf-8"
    headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(headers=headers)
    frames = reply.frames[: max(len(reply.frames) // 2, 1)] if is_truncated else reply.frames
    try:
        await response.prepare(request)
        if delay_ms <= 0:
            await response.write(b"".join(frames))
        else:
            for index, frame in enumerate(frames):
                if index:
                    await asyncio.sleep(delay_ms / 1000)
                await response.write(frame)
        if is_truncated:
            _close_connection(request)
        else:
            await response.write_eof()
    except ConnectionResetError:
        pass  # The client went away mid-stream; there is no one left to answer.
    return response


async def _write_truncated(
    request: web.Request, reply: JsonReply, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=reply.status, headers=headers)
    response.content_length = len(reply.payload)
    try:
        await response.prepare(request)
        await response.write(reply.payload[: len(reply.payload) // 2])
    except ConnectionResetError:
        pass  # Already gone: the truncation happened anyway.
    _close_connection(request)
    return response
