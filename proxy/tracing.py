"""OpenTelemetry traces: a root span per proxied call, a child span per pipeline stage.

Off unless an OTLP endpoint is set (``METERGATE_OTEL_ENDPOINT``, else the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``): then ``build_tracing`` returns None, no call carries a
trace (``ctx.trace is None``) and every hook below returns on its first line, so the
hot path creates no span object and no exporter or export thread exists.

On, each process (each gunicorn worker: ``create_app`` runs after the fork) has its own
tracer provider and batch exporter to ``<endpoint>/v1/traces`` (OTLP/HTTP protobuf).
The exporter also reads the standard ``OTEL_EXPORTER_OTLP_HEADERS`` / ``_TIMEOUT``, and
the provider ``OTEL_TRACES_SAMPLER``.

Stages are *marked*, not wrapped: ``mark(ctx, "auth")`` ends the stage running and
starts the next one, so the pipeline keeps its shape (one line per stage boundary), and
a stage that continues after the route returned (a stream) is marked where it goes on.
Every span carries ``metergate.request_id`` (the id the client sees in ``x-request-id``);
model, tenant and status are added as they become known. Upstream attempts (retries,
fallbacks) are events on the ``upstream`` span, and the upstream request carries the
``traceparent`` of that span. The trace ends when the call's record is submitted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.settings import Settings

if TYPE_CHECKING:
    from proxy.context import CallContext
    from proxy.errors import GatewayError

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
REQUEST_ID = "metergate.request_id"
ROOT_SPAN = "metergate.call"
CLIENT_STAGES = frozenset({"upstream"})  # stages that call out: span kind CLIENT
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class Tracing:
    """One process's tracer provider and batch exporter."""

    provider: TracerProvider
    tracer: Tracer

    def force_flush(self, timeout_seconds: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    def close(self) -> None:
        """Export what is queued, then stop the export thread (worker exit, tests)."""
        self.provider.shutdown()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def build_tracing(settings: Settings) -> Tracing | None:
    """Tracing for this process, or None (the default) when no endpoint is set."""
    if not settings.otel_endpoint:
        return None
    # The pid tells the workers apart: each builds its own provider after the fork.
    resource = Resource.create(
        {"service.name": settings.otel_service_name, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=traces_url(settings.otel_endpoint))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("event=tracing_on endpoint=%s", traces_url(settings.otel_endpoint))
    return Tracing(provider, provider.get_tracer("metergate.proxy"))


class Trace:
    """The spans of one call: its root and the stage running now."""

    __slots__ = ("root", "root_context", "stage", "stage_name", "tracer")

    def __init__(self, tracer: Tracer, root: Span) -> None:
        self.tracer = tracer
        self.root = root
        self.root_context = set_span_in_context(root)
        self.stage: Span | None = None
        self.stage_name = ""

    def next_stage(self, ctx: CallContext, name: str | None) -> None:
        if self.stage is not None:
            _describe(self.stage, ctx)
            if self.stage_name == "upstream" and ctx.attempts:
                _add_attempts(self.stage, ctx.attempts)
            self.stage.end()
            self.stage = None
        if name is not None:
            self.stage_name = name
            kind = SpanKind.CLIENT if name in CLIENT_STAGES else SpanKind.INTERNAL
            self.stage = self.tracer.start_span(
                name,
                context=self.root_context,
                kind=kind,
                attributes={REQUEST_ID: ctx.request_id},
            )


# -- hooks (each returns at once when the call has no trace) ---------------------------


def start(tracing: Tracing | None, ctx: CallContext, headers: Mapping[str, str]) -> None:
    """Open the call's root span (a child of the caller's ``traceparent``, if it sent one)
    and its first stage, ``read_body``."""
    if tracing is None:
        return
    parent: Context | None = _PROPAGATOR.extract(carrier=headers) if headers else None
    root = tracing.tracer.start_span(
        ROOT_SPAN,
        context=parent,
        kind=SpanKind.SERVER,
        start_time=time.time_ns(),
        attributes={
            REQUEST_ID: ctx.request_id,
            "metergate.record_id": ctx.id,
            "metergate.dialect": ctx.dialect,
            "metergate.endpoint": ctx.endpoint,
        },
    )
    trace = Trace(tracing.tracer, root)
    ctx.trace = trace
    trace.next_stage(ctx, "read_body")


def mark(ctx: CallContext, name: str) -> None:
    """End the stage running, start stage ``name``."""
    trace = ctx.trace
    if trace is None:
        return
    trace.next_stage(ctx, name)


def propagate(ctx: CallContext, headers: dict[str, str]) -> None:
    """Add the running stage's ``traceparent`` to the headers sent upstream."""
    trace = ctx.trace
    if trace is None or trace.stage is None:
        return
    _PROPAGATOR.inject(headers, context=set_span_in_context(trace.stage))


def fail(ctx: CallContext, error: GatewayError) -> None:
    """The running stage (the one that raised) ends in ``error``."""
    trace = ctx.trace
    if trace is None or trace.stage is None:
        return
    trace.stage.set_attribute("metergate.error_code", error.code)
    if error.status >= 500:
        trace.stage.set_status(Status(StatusCode.ERROR, error.code))


def finish(ctx: CallContext) -> None:
    """End the last stage and the root span, with what the call came to."""
    trace = ctx.trace
    if trace is None:
        return
    ctx.trace = None  # once: a stream's record and its generator's end both get here
    trace.next_stage(ctx, None)
    root = trace.root
    _describe(root, ctx)
    root.set_attributes(
        {
            "http.response.status_code": ctx.status,
            "metergate.cache": "hit" if ctx.is_cached else "miss",
            "metergate.cost_usd": str(ctx.cost_usd),
            "metergate.prompt_tokens": ctx.usage.prompt_tokens,
            "metergate.completion_tokens": ctx.usage.completion_tokens,
        }
    )
    if ctx.principal is not None:
        root.set_attribute("metergate.user_id", ctx.principal.user_id)
    if ctx.answered_model is not None:
        root.set_attribute("metergate.answered_model", ctx.answered_model.name)
    if ctx.error_code is not None:
        root.set_attribute("metergate.error_code", ctx.error_code)
    if ctx.status >= 500:
        root.set_status(Status(StatusCode.ERROR, ctx.error_code or str(ctx.status)))
    root.end()


def _describe(span: Span, ctx: CallContext) -> None:
    """What is known of the call when ``span`` ends: tenant, model, status, attempts."""
    attributes: dict[str, Any] = {"metergate.status": ctx.status}
    if ctx.principal is not None:
        attributes["metergate.tenant_id"] = ctx.principal.tenant_id
    if ctx.model is not None:
        attributes["metergate.model"] = ctx.model.name
    elif ctx.facts is not None and ctx.facts.model:
        attributes["metergate.model"] = ctx.facts.model
    span.set_attributes(attributes)


def _add_attempts(span: Span, attempts: list[dict[str, Any]]) -> None:
    """Each upstream attempt (retries and fallbacks included) as an event of the span."""
    for number, attempt in enumerate(attempts, start=1):
        event = {k: v for k, v in attempt.items() if isinstance(v, str | int | float)}
        span.add_event("upstream.attempt", {"attempt": number, **event})
