"""The one pipeline every proxied call goes through. The order of stages is written here.

    read body -> authenticate (per-IP limit on failures) -> parse -> endpoint reads request
    -> resolve model -> rate limits -> the stored answer built on must be the tenant's
    -> screen -> cache lookup -> reserve quota
    -> upstream -> check output schema (ask again while invalid) -> price
    -> answer (whole, or streamed event by event) -> record

Every path ends in exactly one record: answered, refused, failed upstream,
cut off mid-stream, or broken by a bug in the gateway. The record carries the
provider's id of the answer; ids of answers the provider keeps (Responses API) are
remembered with the caller's tenant before they leave (proxy.response_owners).
Calls on stored answers by id take the stages that apply (proxy.stored_responses).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from flask import Request, Response
from redis import Redis

from proxy import tracing
from proxy.auth import authenticate
from proxy.cache import CacheEntry, Lookup, ResponseCache
from proxy.charge import Charge, charge_for
from proxy.config_cache import ConfigCache
from proxy.context import CallContext
from proxy.endpoints.base import Endpoint, JsonObject, StreamReader, answer_id
from proxy.endpoints.sse import iter_events
from proxy.errors import (
    AuthenticationFailed,
    GatewayError,
    NotFound,
    UpstreamFailure,
    UpstreamRejected,
    error_body,
    render_error,
)
from proxy.metrics import Metrics
from proxy.output_schema import (
    INVALID_OUTPUT,
    OUTPUT_VALID_HEADER,
    SchemaValidators,
    is_valid_answer,
)
from proxy.prompt_cache import mark_system_prompt
from proxy.providers.base import Provider, UpstreamError, UpstreamResponse, UpstreamUnreachable
from proxy.quota import Quotas, Reservation
from proxy.ratelimit import RateGrant, RateLimits
from proxy.read_deadline import ReadDeadlines
from proxy.recorder import RecordWriter
from proxy.replay import replay_stream
from proxy.resilience import Resilience, fallback_chain
from proxy.response_owners import ResponseOwners
from proxy.screen import moderator_of, screen
from proxy.script_batch import ScriptBatch
from proxy.tracing import Tracing
from proxy.translate import Bridge, Crossing, bridge_for
from proxy.upstream import failure_for, forwarded_headers, invalid_answer, passed_response_headers
from proxy.validate import parse_json_object, read_body, resolve_model
from shared.catalogue import ModelEntry
from shared.pricing import Usage, format_usd, price_prompt_cache_savings, price_usage
from shared.tokens import estimate_prompt_tokens, estimate_tokens

log = logging.getLogger(__name__)

STREAM_COST_HEADER_VALUE = "pending"
REPLAY_OF_HEADER = "x-metergate-replay-of"
UPSTREAM_ERROR_FLAG = "upstream_error"


@dataclass(slots=True)
class Gateway:
    """What the pipeline runs on; one per app (per process)."""

    config: ConfigCache
    providers: dict[str, Provider]
    writer: RecordWriter
    max_body_bytes: int
    trust_forwarded_for: bool = False
    redis: Redis | None = None  # None: embedded mode, in-process storage
    cache: ResponseCache | None = None  # None: no response cache
    rate_limits: RateLimits | None = None  # None: no rate limits (tests of other stages)
    quotas: Quotas | None = None  # None: no quotas or caps
    max_messages: int = 1000
    output_retries: int = 1
    validators: SchemaValidators = field(default_factory=SchemaValidators)
    resilience: Resilience = field(default_factory=Resilience.default)
    owners: ResponseOwners | None = None  # None: no stored answer is served to anyone
    metrics: Metrics | None = None  # what GET /metrics serves (calls reach it via the writer)
    read_deadlines: ReadDeadlines | None = None  # None: a body may take as long as it likes
    tracing: Tracing | None = None  # None: no traces (the default)


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
        replay_of=replay_link(request.headers.get(REPLAY_OF_HEADER)),
    )


def replay_link(value: str | None) -> str | None:
    """The record a console replay links to: kept only when it is a UUID (a record id).

    Any key may send the header, and the proxy cannot check it without SQL on the hot
    path; the link is informational (the console lists a record's replays). It moves
    no money: the call is billed to the key that made it, like any other.
    """
    try:
        return str(uuid.UUID(value)) if value else None
    except ValueError:
        return None


def gateway_headers(ctx: CallContext, cost: str | None = None) -> dict[str, str]:
    headers = {
        "x-request-id": ctx.request_id,
        "x-metergate-record-id": ctx.id,
        "x-metergate-cost-usd": cost if cost is not None else format_usd(ctx.cost_usd),
        "x-metergate-overhead-ms": f"{ctx.overhead_ms():.2f}",
        "x-metergate-cache": "hit" if ctx.is_cached else "miss",
    }
    if ctx.output_valid is not None:
        headers[OUTPUT_VALID_HEADER] = "true" if ctx.output_valid else "false"
    if ctx.rate_grant is not None:
        headers.update(ctx.rate_grant.headers())
    return headers


class Pipeline:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- entry points -----------------------------------------------------------------

    def handle(self, endpoint: Endpoint, request: Request) -> Response:
        gw = self.gateway
        ctx = begin(request, endpoint.dialect, endpoint.name, gw.trust_forwarded_for)
        is_streaming = False
        try:
            request_headers = _lower_headers(request)
            tracing.start(gw.tracing, ctx, request_headers)
            ctx.raw_body = read_body(request, gw.max_body_bytes, gw.read_deadlines)
            tracing.mark(ctx, "auth")
            try:
                ctx.principal = authenticate(gw.config, request_headers)
            except AuthenticationFailed:
                if gw.rate_limits is not None:  # 429 instead, past the per-IP limit
                    gw.rate_limits.check_unauthenticated(ctx.client_ip)
                raise
            tracing.mark(ctx, "parse")
            body = parse_json_object(ctx.raw_body)
            ctx.facts = endpoint.read_request(body, request_headers)
            tracing.mark(ctx, "resolve_model")
            ctx.model = resolve_model(gw.config, ctx.principal, ctx.facts.model, endpoint.provider)
            tracing.mark(ctx, "rate_limit")
            hit = self._admit(ctx, endpoint, body, request_headers)
            if hit is not None:
                return self._serve_cached(ctx, endpoint, hit)
            tracing.mark(ctx, "upstream")
            upstream_body = endpoint.upstream_body(body, ctx.facts, ctx.model.upstream_model)
            if ctx.principal.is_prompt_cache_marked:
                upstream_body = mark_system_prompt(endpoint.name, upstream_body)
            provider = gw.providers[ctx.model.provider]
            headers = forwarded_headers(provider.name, request_headers)
            tracing.propagate(ctx, headers)
            if ctx.facts.is_stream:
                response = self._stream(ctx, endpoint, provider, upstream_body, headers)
                is_streaming = True  # from here the stream settles, when it ends
                return response
            return self._answer(ctx, endpoint, provider, upstream_body, headers)
        except GatewayError as error:
            return self.refuse(ctx, error)
        except Exception:  # a bug: the caller still gets a JSON error, the call a record
            log.exception("event=pipeline_error request_id=%s", ctx.id)
            return self.refuse(ctx, GatewayError("The gateway failed to handle this request."))
        finally:
            if not is_streaming:  # whatever escaped (gevent timeout, worker abort): release
                self._settle_usage(ctx)

    def refuse(self, ctx: CallContext, error: GatewayError) -> Response:
        """Answer with ``error`` in the caller's dialect, and record the call."""
        tracing.fail(ctx, error)
        ctx.status = error.status
        ctx.error_code = error.code
        ctx.error_message = error.message
        ctx.refusal_reason = ctx.refusal_reason or error.refusal_reason
        _flag_upstream_failure(ctx, error)
        response = render_error(error, ctx.dialect)
        ctx.response_body = response.get_data(as_text=True)
        response.headers.update(error.headers)
        response.headers.update(gateway_headers(ctx))
        self.record(ctx)
        return response

    def record(
        self, ctx: CallContext, answer: JsonObject | None = None, is_kept: bool = False
    ) -> None:
        """The end of every path: keep ``answer`` in the cache if it may go there (and end
        the call's single-flight claim), settle usage against limits and quotas, remember
        the owner of an answer the provider keeps (``is_kept``), then log the call. On
        Redis the scripts of the first three go in one round trip."""
        tracing.mark(ctx, "record")
        gw = self.gateway
        batch = ScriptBatch(gw.redis) if gw.redis is not None else None
        self._settle_cache(ctx, answer, batch)
        self._settle_usage(ctx, batch)
        if is_kept and ctx.response_id and gw.owners is not None and ctx.principal is not None:
            gw.owners.remember(ctx.response_id, ctx.principal.tenant_id, batch)
        if batch is not None:
            try:
                batch.run()  # each stage handles its own outcome; Redis errors never escape
            except Exception:  # a bug there must not cost the call its record
                log.exception("event=settle_batch_failed request_id=%s", ctx.id)
        try:
            record = ctx.to_record()
            self.gateway.writer.submit(record)
        except Exception:  # building the record must never take the answer down
            log.exception("event=record_build_failed request_id=%s", ctx.id)
            tracing.finish(ctx)
            return
        tracing.finish(ctx)

    # -- rate limits and quotas --------------------------------------------------------

    def _charge(self, ctx: CallContext) -> Charge:
        """The most this call can use; a schema retry can ask again, so it counts too."""
        assert ctx.facts is not None and ctx.principal is not None
        retries = self.gateway.output_retries if ctx.facts.output_schema is not None else 0
        return charge_for(ctx.facts, ctx.principal, attempts=1 + retries)

    def _begin_limit_rate(
        self, ctx: CallContext, batch: ScriptBatch | None
    ) -> Callable[[], RateGrant] | None:
        """Count the call against its rate limits (``RateLimits.begin_check``); None when
        there are none. Call the returned function once ``batch`` ran."""
        limits = self.gateway.rate_limits
        if limits is None:
            return None
        assert ctx.principal is not None and ctx.facts is not None
        charged = self._charge(ctx).total_tokens
        return limits.begin_check(ctx.principal, ctx.facts.end_user, charged, batch)

    def _begin_reserve(
        self, ctx: CallContext, batch: ScriptBatch | None
    ) -> Callable[[bool], Reservation | None] | None:
        quotas = self.gateway.quotas
        assert ctx.principal is not None and ctx.facts is not None and ctx.model is not None
        if quotas is None or not ctx.facts.is_billed:
            return None
        # Priced at the dearest model that may answer: the one asked for or a fallback.
        fallbacks = (self.gateway.config.model(name) for name in ctx.model.fallbacks)
        models = [ctx.model, *(model for model in fallbacks if model is not None)]
        return quotas.begin_reserve(
            ctx.id, ctx.principal, ctx.facts.end_user, models, self._charge(ctx), batch
        )

    def _settle_usage(self, ctx: CallContext, batch: ScriptBatch | None = None) -> None:
        """Correct the token charge and settle the quota hold to actual usage (once)."""
        used = 0 if ctx.is_cached else ctx.usage.total_tokens
        cost = Decimal(0) if ctx.is_cached else ctx.cost_usd
        if ctx.rate_grant is not None and self.gateway.rate_limits is not None:
            self.gateway.rate_limits.correct(ctx.rate_grant, used, batch)
        if ctx.reservation is not None and self.gateway.quotas is not None:
            self.gateway.quotas.settle(ctx.reservation, used, cost, batch)

    # -- whole answers ----------------------------------------------------------------

    def _send(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> UpstreamResponse:
        """Call upstream with retries, breakers and the fallback chain (proxy.resilience).

        The answer is taken far enough to know it arrived (a whole body read, a stream's
        first chunk), so that a failure up to there is still retried: nothing has reached
        the client yet. Sets ``ctx.answered_model``; appends to ``ctx.attempts``.

        A fallback of the other provider gets the request translated into its dialect
        (``proxy.translate``); its answer is translated back by the caller of ``_send``.
        """
        assert ctx.model is not None and ctx.principal is not None and ctx.facts is not None
        is_stream = ctx.facts.is_stream
        facts, principal = ctx.facts, ctx.principal
        crossing = Crossing(
            endpoint,
            facts,
            body,
            # Asked only when translating: what the call was charged for.
            default_max_tokens=lambda: charge_for(facts, principal).completion_tokens,
            is_prompt_cache_marked=principal.is_prompt_cache_marked,
            request_id=ctx.id,
        )
        chain = fallback_chain(
            ctx.model, self.gateway.config.model, ctx.principal.may_use, crossing.can_serve
        )

        def send(model: ModelEntry, seconds_left: float) -> UpstreamResponse:
            path, payload, sent_headers = endpoint.upstream_path, body, headers
            if model.provider != endpoint.provider:
                path, payload = crossing.request(model)
                sent_headers = forwarded_headers(model.provider, headers)
            upstream = self.gateway.providers[model.provider].send(
                path,
                {**payload, "model": model.upstream_model},
                sent_headers,
                timeout_seconds=seconds_left,
            )
            upstream.prefetch(is_stream=is_stream)
            return upstream

        if ctx.attempts is None:
            ctx.attempts = []
        first = len(ctx.attempts)
        started = time.perf_counter()
        try:
            ctx.answered_model, upstream = self.gateway.resilience.call(chain, send, ctx.attempts)
            return upstream
        except UpstreamRejected as error:
            if ctx.attempts and crossing.is_translated(ctx.attempts[-1]["model"]):
                raise crossing.rejection(error) from error
            raise
        finally:
            ctx.upstream_seconds += time.perf_counter() - started
            crossing.note(ctx.attempts[first:])

    def _answer(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> Response:
        assert ctx.model is not None and ctx.facts is not None
        fetched = self._fetch(ctx, endpoint, provider, body, headers)
        ctx.usage = fetched.usage
        if ctx.facts.output_schema is not None:
            tracing.mark(ctx, "output_check")
            fetched = self._conform(ctx, endpoint, provider, body, headers, fetched)
        tracing.mark(ctx, "price")
        upstream, raw = fetched.upstream, fetched.raw
        # A kept answer's id is remembered in the settle round trip (``record``), before
        # the answer leaves.
        self._note_answer_id(ctx, answer_id(fetched.answer), is_kept=False)
        summary = endpoint.recorded_answer(fetched.answer)
        if summary is not None:
            ctx.response_body = orjson.dumps(summary).decode()
        ctx.cost_usd = price_usage(ctx.usage, ctx.answered_model or ctx.model)
        ctx.cache_saved_usd = price_prompt_cache_savings(ctx.usage, ctx.answered_model or ctx.model)
        tracing.mark(ctx, "answer")
        ctx.first_token_at = time.perf_counter()
        passed = {**passed_response_headers(upstream.headers), **gateway_headers(ctx)}
        response = Response(raw, upstream.status, passed, mimetype="application/json")
        self.record(ctx, fetched.answer if upstream.status == 200 else None, endpoint.keeps_answers)
        return response

    def _fetch(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
    ) -> Fetched:
        """One whole answer from upstream, read and parsed; raises GatewayError."""
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
        bridge = _bridge_of(ctx, endpoint)
        if bridge is None:
            return Fetched(upstream, raw, answer, endpoint.read_usage(answer))
        # A fallback of the other provider answered: usage read from its own answer (it
        # keeps cache writes, which the caller's dialect may have no field for).
        usage = bridge.target.read_usage(answer)
        answer = bridge.translate_answer(answer)
        raw = orjson.dumps(answer)
        ctx.response_body = raw.decode()
        return Fetched(upstream, raw, answer, usage)

    def _conform(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        provider: Provider,
        body: JsonObject,
        headers: dict[str, str],
        fetched: Fetched,
    ) -> Fetched:
        """Check the answer against the requested JSON schema; ask again while it fails.

        Every attempt's usage is counted. A retry that fails upstream leaves the answer
        already in hand to be served (flagged), rather than failing the call.
        """
        assert ctx.facts is not None and ctx.facts.output_schema is not None
        validator = self.gateway.validators.get(ctx.facts.output_schema)
        if validator is None:
            return fetched
        is_valid = is_valid_answer(validator, fetched.answer)
        for _ in range(self.gateway.output_retries):
            if is_valid is not False:
                break
            try:
                fetched = self._fetch(ctx, endpoint, provider, body, headers)
            except GatewayError as error:
                log.warning("event=output_retry_failed request_id=%s code=%s", ctx.id, error.code)
                break
            ctx.usage = _sum_usage(ctx.usage, fetched.usage)
            is_valid = is_valid_answer(validator, fetched.answer)
        ctx.response_body = fetched.raw.decode("utf-8", "replace")
        ctx.upstream_request_id = _upstream_id(fetched.upstream)
        self._note_output(ctx, is_valid)
        return fetched

    def _note_output(self, ctx: CallContext, is_valid: bool | None) -> None:
        ctx.output_valid = is_valid
        if is_valid is False:
            ctx.flag_reasons.append(INVALID_OUTPUT)

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
        bridge = _bridge_of(ctx, endpoint)
        if bridge is not None:
            return self._stream_translated(ctx, endpoint, bridge, upstream)
        reader = endpoint.stream_reader(ctx.facts)
        tracing.mark(ctx, "stream")
        events = self._relay(ctx, upstream, reader, endpoint.keeps_answers)
        response = Response(events, status=200, mimetype="text/event-stream")
        response.headers.update(passed_response_headers(upstream.headers))
        response.headers.update(gateway_headers(ctx, cost=STREAM_COST_HEADER_VALUE))
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    def _relay(
        self,
        ctx: CallContext,
        upstream: UpstreamResponse,
        reader: StreamReader,
        keeps_answers: bool,
    ) -> Iterator[bytes]:
        """Forward events as they come; record the assembled answer whatever happens.

        The id of a kept answer is remembered before the event carrying it goes out, and
        a complete answer is settled and recorded before its last event goes out, so a
        client that has read the whole stream can already find its record.
        """
        started = time.perf_counter()
        is_settled = False
        try:
            for event in iter_events(upstream.iter_bytes()):
                out = reader.feed(event)
                if ctx.response_id is None and reader.upstream_id is not None:
                    self._note_answer_id(ctx, reader.upstream_id, keeps_answers)
                if out is not None and ctx.first_token_at is None:
                    ctx.first_token_at = time.perf_counter()
                if reader.is_complete and not is_settled:
                    is_settled = True
                    ctx.upstream_seconds += time.perf_counter() - started
                    self._settle_stream(ctx, reader)
                if out is not None:
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
            if not is_settled:
                ctx.upstream_seconds += time.perf_counter() - started
                self._settle_stream(ctx, reader)

    def _note_answer_id(self, ctx: CallContext, response_id: str | None, is_kept: bool) -> None:
        """Record the answer's id; remember a kept answer's tenant (before it is sent)."""
        ctx.response_id = response_id[:200] if response_id else None
        owners = self.gateway.owners
        if is_kept and ctx.response_id and owners is not None and ctx.principal is not None:
            owners.remember(ctx.response_id, ctx.principal.tenant_id)

    def require_owner(self, ctx: CallContext, response_id: str, param: str | None) -> None:
        """Pass when the caller's tenant owns the stored answer ``response_id``; else 404."""
        assert ctx.principal is not None
        if self.gateway.owners is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param=param)
        self.gateway.owners.require(response_id, ctx.principal.tenant_id, param=param)

    def _stream_translated(
        self, ctx: CallContext, endpoint: Endpoint, bridge: Bridge, upstream: UpstreamResponse
    ) -> Response:
        """A fallback of the other provider streams its answer: read it whole with that
        endpoint's reader, then replay it in the caller's dialect (``proxy.replay``).

        The price of translating: the client's first byte waits for the whole answer. In
        return a failure up to the last event is still a clean refusal, with a status.
        """
        assert ctx.facts is not None and ctx.model is not None
        answered = ctx.answered_model or ctx.model
        reader = bridge.target.stream_reader(ctx.facts)
        started = time.perf_counter()
        try:
            for event in iter_events(upstream.iter_bytes()):
                reader.feed(event)
            if not reader.is_complete:
                raise UpstreamUnreachable("the provider's stream ended before its last event")
        except UpstreamError as exc:  # what was streamed so far was paid for
            ctx.usage = partial_usage(reader.usage(), ctx.facts.prompt_text, reader.assembled())
            ctx.cost_usd = price_usage(ctx.usage, answered)
            raise failure_for(exc) from exc
        finally:
            upstream.close()
            ctx.upstream_seconds += time.perf_counter() - started
        answer = bridge.translate_answer(reader.assembled())
        ctx.response_id = reader.upstream_id
        ctx.usage = reader.usage()
        ctx.cost_usd = price_usage(ctx.usage, answered)
        ctx.cache_saved_usd = price_prompt_cache_savings(ctx.usage, answered)
        ctx.response_body = orjson.dumps(answer).decode()
        if ctx.facts.output_schema is not None:
            validator = self.gateway.validators.get(ctx.facts.output_schema)
            if validator is not None:
                self._note_output(ctx, is_valid_answer(validator, answer))
        ctx.first_token_at = time.perf_counter()
        events = replay_stream(endpoint.name, answer, ctx.facts)
        response = Response(events, status=200, mimetype="text/event-stream")
        response.headers.update(passed_response_headers(upstream.headers))
        response.headers.update(gateway_headers(ctx))
        response.headers["Cache-Control"] = "no-cache"
        self.record(ctx, answer)
        return response

    def _note_failure(self, ctx: CallContext, error: GatewayError) -> None:
        ctx.status, ctx.error_code, ctx.error_message = error.status, error.code, error.message
        _flag_upstream_failure(ctx, error)

    def _settle_stream(self, ctx: CallContext, reader: StreamReader) -> None:
        assert ctx.model is not None and ctx.facts is not None
        tracing.mark(ctx, "price")
        assembled: JsonObject | None = None
        ctx.response_id = ctx.response_id or reader.upstream_id
        try:
            assembled = reader.assembled()
            ctx.response_body = orjson.dumps(assembled).decode()
            ctx.usage = reader.usage()
            if not reader.is_complete:
                ctx.usage = partial_usage(ctx.usage, ctx.facts.prompt_text, assembled)
            elif ctx.facts.output_schema is not None:
                validator = self.gateway.validators.get(ctx.facts.output_schema)
                if validator is not None:
                    self._note_output(ctx, is_valid_answer(validator, assembled))
            ctx.cost_usd = price_usage(ctx.usage, ctx.answered_model or ctx.model)
            ctx.cache_saved_usd = price_prompt_cache_savings(
                ctx.usage, ctx.answered_model or ctx.model
            )
        finally:
            self.record(ctx, assembled if reader.is_complete else None)

    # -- response cache ---------------------------------------------------------------

    def _admit(
        self, ctx: CallContext, endpoint: Endpoint, body: JsonObject, headers: dict[str, str]
    ) -> CacheEntry | None:
        """Rate limits, screening, the cache lookup and the quota reservation, in that
        order of precedence: the cached answer to this call, if any (on a miss the call
        holds its ticket and, on a miss, its reservation in ``ctx.reservation``).

        On Redis the rate limits' last scripts, the cache read-and-claim and the
        reservation go in one round trip, before screening (which needs no Redis). A call
        refused after it (rate limit, screening) keeps what that round trip took only
        until it settles: its claim is ended and its hold released with zero usage. A hit
        costs nothing against quotas: its hold is released the same way, and a quota it
        would not fit refuses nothing.
        """
        gw = self.gateway
        assert ctx.facts is not None and ctx.principal is not None
        batch = ScriptBatch(gw.redis) if gw.redis is not None else None
        finish_rate = self._begin_limit_rate(ctx, batch)
        lookup: Lookup = _no_entry
        reserve: Callable[[bool], Reservation | None] | None = None
        refused: GatewayError | None = None
        try:
            lookup = self._begin_look_up(ctx, endpoint, body, headers, batch)
            reserve = self._begin_reserve(ctx, batch)
        except GatewayError as error:  # a malformed cache header: refused after rate limits
            refused = error
        if batch is not None:
            batch.run()
        try:
            if finish_rate is not None:
                ctx.rate_grant = finish_rate()
            if refused is not None:
                raise refused
            tracing.mark(ctx, "screen")
            if ctx.facts.previous_response_id is not None:
                self.require_owner(ctx, ctx.facts.previous_response_id, "previous_response_id")
            ctx.flag_reasons += screen(
                ctx.facts,
                ctx.principal,
                gw.config.screening_rules(ctx.principal.tenant_id),
                max_messages=gw.max_messages,
                moderator=moderator_of(gw.providers),
            )
        except BaseException:  # refused: what the round trip took is given back at settle
            lookup(may_wait=False)
            if reserve is not None:
                ctx.reservation = reserve(False)
            raise
        tracing.mark(ctx, "cache_lookup")
        hit = lookup()
        tracing.mark(ctx, "reserve_quota")
        if reserve is not None:
            ctx.reservation = reserve(hit is None)
        return hit

    def _begin_look_up(
        self,
        ctx: CallContext,
        endpoint: Endpoint,
        body: JsonObject,
        headers: dict[str, str],
        batch: ScriptBatch | None,
    ) -> Lookup:
        cache = self.gateway.cache
        assert ctx.principal is not None and ctx.model is not None
        if cache is None:
            return _no_entry
        ctx.cache = cache.plan(
            tenant_id=ctx.principal.tenant_id,
            tier_ttl_seconds=ctx.principal.limits.cache_ttl_seconds,
            endpoint=endpoint.name,
            upstream_model=ctx.model.upstream_model,
            body=body,
            headers=headers,
        )
        return cache.begin_lookup(ctx.cache, batch) if ctx.cache is not None else _no_entry

    def _serve_cached(self, ctx: CallContext, endpoint: Endpoint, entry: CacheEntry) -> Response:
        """Answer from the cache: no upstream call, no cost; the record keeps what it saved."""
        tracing.mark(ctx, "answer")
        assert ctx.facts is not None
        ctx.is_cached = True
        ctx.usage, ctx.cost_usd, ctx.cache_saved_usd = entry.usage, Decimal(0), entry.cost_usd
        ctx.response_id = answer_id(entry.body)
        body = orjson.dumps(entry.body)
        summary = endpoint.recorded_answer(entry.body)
        ctx.response_body = orjson.dumps(summary).decode() if summary else body.decode()
        ctx.first_token_at = time.perf_counter()
        if ctx.facts.is_stream:
            events = replay_stream(endpoint.name, entry.body, ctx.facts)
            response = Response(events, status=200, mimetype="text/event-stream")
            response.headers["Cache-Control"] = "no-cache"
        else:
            response = Response(body, status=200, mimetype="application/json")
        response.headers.update(gateway_headers(ctx))
        self.record(ctx)
        return response

    def _settle_cache(
        self, ctx: CallContext, answer: JsonObject | None, batch: ScriptBatch | None
    ) -> None:
        """Store a complete, successful, valid answer of the model asked for (not of a
        fallback); end the call's single-flight claim."""
        cache, ticket = self.gateway.cache, ctx.cache
        if cache is None or ticket is None:
            return
        entry = None
        is_asked_model = ctx.answered_model is None or ctx.answered_model == ctx.model
        if answer is not None and ctx.model is not None and ctx.status == 200 and is_asked_model:
            if ctx.output_valid is not False:
                entry = CacheEntry(answer, ctx.usage, ctx.cost_usd, ctx.model.name)
        cache.settle(ticket, entry, batch)


def _no_entry(may_wait: bool = True) -> CacheEntry | None:
    return None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A whole upstream answer: the response (headers, status), its bytes, parsed."""

    upstream: UpstreamResponse
    raw: bytes
    answer: JsonObject
    usage: Usage  # translated answers: as the provider reported it, cache writes included


def _sum_usage(first: Usage, second: Usage) -> Usage:
    return Usage(
        first.prompt_tokens + second.prompt_tokens,
        first.completion_tokens + second.completion_tokens,
        first.cache_read_tokens + second.cache_read_tokens,
        first.cache_write_tokens + second.cache_write_tokens,
    )


def partial_usage(usage: Usage, prompt_text: list[str], assembled: JsonObject) -> Usage:
    """Usage for a stream cut off before the provider reported it: estimate what's missing."""
    prompt = usage.prompt_tokens or estimate_prompt_tokens(prompt_text)
    content = assembled.get("choices") or assembled.get("content") or assembled.get("output") or []
    completion = usage.completion_tokens or estimate_tokens(orjson.dumps(content).decode())
    return Usage(prompt, completion, usage.cache_read_tokens, usage.cache_write_tokens)


def stream_error_event(error: GatewayError, dialect: str) -> bytes:
    """An error event both SDKs raise on, for failures after the 200 was sent."""
    payload = orjson.dumps(error_body(error, dialect))
    if dialect == "anthropic":
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


def _bridge_of(ctx: CallContext, endpoint: Endpoint) -> Bridge | None:
    """The bridge back to the caller's dialect when a model of another provider answered."""
    answered = ctx.answered_model
    if answered is None or answered.provider == endpoint.provider:
        return None
    return bridge_for(endpoint.name, answered.provider)


def _flag_upstream_failure(ctx: CallContext, error: GatewayError) -> None:
    """A provider's failure (502/503/504) puts the call in support's flagged queue."""
    if isinstance(error, UpstreamFailure):
        ctx.flag_reasons.append(UPSTREAM_ERROR_FLAG)


def _upstream_id(upstream: UpstreamResponse) -> str | None:
    return upstream.headers.get("x-request-id") or upstream.headers.get("request-id")


def _lower_headers(request: Request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}
