"""The one pipeline every proxied call goes through. The order of stages is written here.

    read body -> authenticate -> parse -> endpoint reads request -> resolve model
    -> upstream -> price -> answer (whole, or streamed event by event) -> record

Every path ends in exactly one record: answered, refused, failed upstream,
cut off mid-stream, or broken by a bug in the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from flask import Request, Response
from redis import Redis

from proxy.auth import authenticate
from proxy.config_cache import ConfigCache
from proxy.context import CallContext
from proxy.endpoints.base import Endpoint, JsonObject, StreamReader
from proxy.endpoints.sse import iter_events
from proxy.errors import GatewayError, error_body, render_error
from proxy.providers.base import Provider, UpstreamError, UpstreamResponse, UpstreamUnreachable
from proxy.recorder import RecordWriter
from proxy.upstream import failure_for, forwarded_headers, invalid_answer, passed_response_headers
from proxy.validate import parse_json_object, read_body, resolve_model
from shared.pricing import Usage, format_usd, price_usage
from shared.tokens import estimate_prompt_tokens, estimate_tokens

log = logging.getLogger(__name__)

STREAM_COST_HEADER_VALUE = "pending"


@dataclass(slots=True)
class Gateway:
    """What the pipeline runs on; one per app (per process)."""

    config: ConfigCache
    providers: dict[str, Provider]
    writer: RecordWriter
    max_body_bytes: int
    trust_forwarded_for: bool = False
    redis: Redis | None = None  # None: embedded mode, in-process storage


def begin(request: Request, dialect: str, endpoint: str, trust_forwarded_for: bool) -> CallContext:
    client_ip = request.remote_addr
    if trust_forwarded_for and request.headers.get("X-Forwarded-For"):
        client_ip = request.headers["X-Forwarded-For"].split(",")[0].strip()
    return CallContext(
        dialect=dialect,
        endpoint=endpoint,
        client_request_id=(request.headers.get("x-request-id") or "")[:200] or None,
        client_ip=client_ip,
        user_agent=(request.headers.get("User-Agent") or "")[:500] or None,
        session_id=(request.headers.get("x-metergate-session-id") or "")[:200] or None,
    )


def gateway_headers(ctx: CallContext, cost: str | None = None) -> dict[str, str]:
    return {
        "x-request-id": ctx.request_id,
        "x-metergate-record-id": ctx.id,
        "x-metergate-cost-usd": cost if cost is not None else format_usd(ctx.cost_usd),
        "x-metergate-overhead-ms": f"{ctx.overhead_ms():.2f}",
        "x-metergate-cache": "hit" if ctx.is_cached else "miss",
    }


class Pipeline:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- entry points -----------------------------------------------------------------

    def handle(self, endpoint: Endpoint, request: Request) -> Response:
        gw = self.gateway
        ctx = begin(request, endpoint.dialect, endpoint.name, gw.trust_forwarded_for)
        try:
            request_headers = _lower_headers(request)
            ctx.raw_body = read_body(request, gw.max_body_bytes)
            ctx.principal = authenticate(gw.config, request_headers)
            body = parse_json_object(ctx.raw_body)
            ctx.facts = endpoint.read_request(body, request_headers)
            ctx.model = resolve_model(gw.config, ctx.principal, ctx.facts.model, endpoint.provider)
            upstream_body = endpoint.upstream_body(body, ctx.facts, ctx.model.upstream_model)
            provider = gw.providers[ctx.model.provider]
            headers = forwarded_headers(provider.name, request_headers)
            if ctx.facts.is_stream:
                return self._stream(ctx, endpoint, provider, upstream_body, headers)
            return self._answer(ctx, endpoint, provider, upstream_body, headers)
        except GatewayError as error:
            return self.refuse(ctx, error)
        except Exception:  # a bug: the caller still gets a JSON error, the call a record
            log.exception("event=pipeline_error request_id=%s", ctx.id)
            return self.refuse(ctx, GatewayError("The gateway failed to handle this request."))

    def refuse(self, ctx: CallContext, error: GatewayError) -> Response:
        """Answer with ``error`` in the caller's dialect, and record the call."""
        ctx.status = error.status
        ctx.error_code = error.code
        ctx.error_message = error.message
        response = render_error(error, ctx.dialect)
        ctx.response_body = response.get_data(as_text=True)
        response.headers.update(error.headers)
        response.headers.update(gateway_headers(ctx))
        self.record(ctx)
        return response

    def record(self, ctx: CallContext) -> None:
        try:
            self.gateway.writer.submit(ctx.to_record())
        except Exception:  # building the record must never take the answer down
            log.exception("event=record_build_failed request_id=%s", ctx.id)

    # -- whole answers ----------------------------------------------------------------

    def _send(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> UpstreamResponse:
        started = time.perf_counter()
        try:
            return provider.send(endpoint.upstream_path, body, headers)
        except UpstreamError as exc:
            raise failure_for(exc) from exc
        finally:
            ctx.upstream_seconds += time.perf_counter() - started

    def _answer(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> Response:
        assert ctx.model is not None
        upstream = self._send(ctx, endpoint, provider, body, headers)
        started = time.perf_counter()
        try:
            raw = upstream.read()
        except UpstreamError as exc:
            raise failure_for(exc) from exc
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
        ctx.upstream_request_id = _upstream_id(upstream)
        ctx.response_body = raw.decode("utf-8", "replace")
        if "json" not in upstream.content_type:
            raise invalid_answer(f"content type {upstream.content_type or 'missing'}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid_answer("the body is not valid JSON") from exc
        if not isinstance(answer, dict):
            raise invalid_answer("the body is not a JSON object")
        ctx.usage = endpoint.read_usage(answer)
        ctx.cost_usd = price_usage(ctx.usage, ctx.model)
        ctx.first_token_at = time.perf_counter()
        response = Response(raw, status=upstream.status, mimetype="application/json")
        response.headers.update(passed_response_headers(upstream.headers))
        response.headers.update(gateway_headers(ctx))
        self.record(ctx)
        return response

    # -- streams ----------------------------------------------------------------------

    def _stream(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> Response:
        assert ctx.facts is not None
        upstream = self._send(ctx, endpoint, provider, body, headers)
        ctx.upstream_request_id = _upstream_id(upstream)
        if "text/event-stream" not in upstream.content_type:
            upstream.close()
            raise invalid_answer(f"expected an event stream, got {upstream.content_type or '?'}")
        reader = endpoint.stream_reader(ctx.facts)
        response = Response(
            self._relay(ctx, upstream, reader), status=200, mimetype="text/event-stream"
        )
        response.headers.update(passed_response_headers(upstream.headers))
        response.headers.update(gateway_headers(ctx, cost=STREAM_COST_HEADER_VALUE))
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    def _relay(
        self, ctx: CallContext, upstream: UpstreamResponse, reader: StreamReader
    ) -> Iterator[bytes]:
        """Forward events as they come; record the assembled answer whatever happens."""
        started = time.perf_counter()
        try:
            for event in iter_events(upstream.iter_bytes()):
                out = reader.feed(event)
                if out is None:
                    continue
                if ctx.first_token_at is None:
                    ctx.first_token_at = time.perf_counter()
                yield out
            if not reader.is_complete:
                raise UpstreamUnreachable("the provider's stream ended before its last event")
        except UpstreamError as exc:
            error = failure_for(exc)
            self._note_failure(ctx, error)
            yield stream_error_event(error, ctx.dialect)
        except GeneratorExit:
            ctx.status, ctx.error_code = 499, "client_disconnected"
            ctx.error_message = "The client closed the connection mid-stream."
            raise
        finally:
            upstream.close()
            ctx.upstream_seconds += time.perf_counter() - started
            self._settle_stream(ctx, reader)

    def _note_failure(self, ctx: CallContext, error: GatewayError) -> None:
        ctx.status, ctx.error_code, ctx.error_message = error.status, error.code, error.message

    def _settle_stream(self, ctx: CallContext, reader: StreamReader) -> None:
        assert ctx.model is not None and ctx.facts is not None
        try:
            assembled = reader.assembled()
            ctx.response_body = orjson.dumps(assembled).decode()
            ctx.usage = reader.usage()
            if not reader.is_complete:
                ctx.usage = partial_usage(ctx.usage, ctx.facts.prompt_text, assembled)
            ctx.cost_usd = price_usage(ctx.usage, ctx.model)
        finally:
            self.record(ctx)


def partial_usage(usage: Usage, prompt_text: list[str], assembled: JsonObject) -> Usage:
    """Usage for a stream cut off before the provider reported it: estimate what's missing."""
    prompt = usage.prompt_tokens or estimate_prompt_tokens(prompt_text)
    content = assembled.get("choices") or assembled.get("content") or []
    completion = usage.completion_tokens or estimate_tokens(orjson.dumps(content).decode())
    return Usage(prompt, completion, usage.cache_read_tokens, usage.cache_write_tokens)


def stream_error_event(error: GatewayError, dialect: str) -> bytes:
    """An error event both SDKs raise on, for failures after the 200 was sent."""
    payload = orjson.dumps(error_body(error, dialect))
    if dialect == "anthropic":
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


def _upstream_id(upstream: UpstreamResponse) -> str | None:
    return upstream.headers.get("x-request-id") or upstream.headers.get("request-id")


def _lower_headers(request: Request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}
