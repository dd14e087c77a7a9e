"""Prometheus metrics, observed once per call from its record, served at ``GET /metrics``.

The record writer's thread observes each record as it takes it off its queue
(``RecordWriter.observe_with``): calls do not wait for their metrics, and one thread per
process writes them, where every call's thread would contend for prometheus_client's
lock (about ten values a call). A scrape first waits for the records submitted before
it to be observed (``RecordWriter.seen``), so it counts every call answered before it.

Under gunicorn every worker is its own process. ``metergate serve proxy`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers fork, so each
worker writes its values to files there and whichever worker answers a scrape sums
them all (``MultiProcessCollector``). A worker's live gauges are dropped when it exits
(``proxy.server``). Without the variable (the embedded single-process server, tests),
the app's own registry is served.

Labels stay bounded: a model the catalogue does not know is ``"-"`` (clients choose
model names), and a path that is no endpoint (an unknown route) is ``"other"``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from proxy.breaker import BreakerBoard, BreakerState
from proxy.recorder import RecordWriter
from proxy.server import MULTIPROC_DIR_ENV
from shared.catalogue import ModelEntry
from shared.records import CallRecord

log = logging.getLogger(__name__)

UNKNOWN = "-"
OTHER_ENDPOINT = "other"
GAUGE_SECONDS = 1.0  # how often a worker's calls refresh its queue gauges

# Seconds; calls to LLMs run from milliseconds (cache hits) to minutes (long streams).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# 4xx refusals without a refusal reason of their own, named by status.
REFUSAL_BY_STATUS = {
    400: "invalid_request",
    401: "authentication",
    403: "permission",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limit",
}


class Metrics:
    """The proxy's metrics; one per app. ``observe`` never raises.

    ``writer`` shows it every record and gives the process-wide gauges, ``breakers`` the
    breaker states; ``model`` looks up the catalogue entry of a model named in a record's
    attempts.
    """

    def __init__(
        self,
        writer: RecordWriter,
        breakers: BreakerBoard,
        model: Callable[[str], ModelEntry | None],
    ) -> None:
        self._writer = writer
        self._breakers = breakers
        self._model = model
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._gauges_due = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiproc_dir = os.environ.get(MULTIPROC_DIR_ENV) or None
        is_multiprocess_value = bool(getattr(values.ValueClass, "_multiprocess", False))
        if bool(self.multiproc_dir) != is_multiprocess_value:
            log.error(
                "event=metrics_misconfigured reason=%s must be set before prometheus_client "
                "is imported",
                MULTIPROC_DIR_ENV,
            )
        r = self.registry
        self.requests = Counter(
            "metergate_requests",
            "Calls that reached the proxy, refused ones included.",
            ["dialect", "endpoint", "model", "status", "cache"],
            registry=r,
        )
        self.latency = Histogram(
            "metergate_request_duration_seconds",
            "Total time of a call in the gateway, upstream included (streams: to the last event).",
            ["dialect", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "metergate_upstream_duration_seconds",
            "Time spent waiting on the provider, retries and backoff included.",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "metergate_overhead_duration_seconds",
            "Time spent in the gateway itself: total time minus upstream time.",
            ["dialect", "endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "metergate_time_to_first_token_seconds",
            "Time from the call's arrival to the first token sent to the client.",
            ["provider", "model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "metergate_tokens",
            "Tokens used by calls that went upstream (kind: prompt, completion, cache_read, "
            "cache_write).",
            ["provider", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "metergate_cost_usd",
            "Cost of calls in USD, at the catalogue's prices.",
            ["provider", "model"],
            registry=r,
        )
        self.cache_saved = Counter(
            "metergate_cache_saved_usd",
            "USD saved by response-cache hits and provider prompt caching.",
            ["provider", "model"],
            registry=r,
        )
        self.refusals = Counter(
            "metergate_refusals",
            "Calls refused by the gateway, by reason.",
            ["dialect", "reason"],
            registry=r,
        )
        self.upstream_attempts = Counter(
            "metergate_upstream_attempts",
            "Upstream attempts (result: ok, an HTTP status, timeout, unreachable, circuit_open).",
            ["provider", "model", "result"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "metergate_upstream_retries",
            "Upstream attempts after the first one for the same model.",
            ["provider", "model"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "metergate_upstream_breaker_state",
            "Circuit breaker of an upstream model: 0 closed, 1 half-open, 2 open (the worst "
            "over the live workers).",
            ["provider", "model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.queue_depth = Gauge(
            "metergate_record_queue_depth",
            "Records waiting in memory for the record writer (summed over live workers).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.spooled = Gauge(
            "metergate_records_spooled",
            "Records waiting on local disk for the database (summed over live workers).",
            multiprocess_mode="livesum",
            registry=r,
        )
        writer.observe_with(self.observe)

    def observe(self, record: CallRecord) -> None:
        """Count one call from its record (the one place calls are counted)."""
        try:
            self._observe(record)
        except Exception:  # metrics must never take an answer down
            log.exception("event=metrics_observe_failed request_id=%s", record.id)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every worker's metrics, and its content type."""
        self._writer.seen()  # this worker's calls so far are counted (at most ~1 s wait)
        self.update_gauges()
        if self.multiproc_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def update_gauges(self) -> None:
        writer = self._writer
        self.queue_depth.set(writer.queue_depth)
        self.spooled.set(writer.spooled_count)

    def _observe(self, record: CallRecord) -> None:
        is_known_model = record.provider is not None
        model = (record.model or UNKNOWN) if is_known_model else UNKNOWN
        provider = record.provider or UNKNOWN
        endpoint = OTHER_ENDPOINT if record.endpoint.startswith("/") else record.endpoint
        self._child(
            self.requests,
            record.dialect,
            endpoint,
            model,
            str(record.status),
            "hit" if record.is_cached else "miss",
        ).inc()
        self._child(self.latency, record.dialect, endpoint).observe(record.latency_ms / 1000.0)
        if record.overhead_ms is not None:
            self._child(self.overhead, record.dialect, endpoint).observe(
                record.overhead_ms / 1000.0
            )
        if record.upstream_latency_ms is not None:
            self._child(self.upstream_latency, provider, model).observe(
                record.upstream_latency_ms / 1000.0
            )
        if record.ttft_ms is not None:
            stream = "true" if record.is_stream else "false"
            self._child(self.ttft, provider, model, stream).observe(record.ttft_ms / 1000.0)
        if is_known_model:
            self._observe_usage(record, provider, model)
        reason = refusal_reason(record)
        if reason is not None:
            self._child(self.refusals, record.dialect, reason).inc()
        self._observe_attempts(record)
        now = time.monotonic()
        if now >= self._gauges_due:  # a scrape updates them anyway; calls, once a second
            self._gauges_due = now + GAUGE_SECONDS
            self.update_gauges()

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus_client checks and locks on every
        ``labels`` call, and a call observes about ten of them."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _observe_usage(self, record: CallRecord, provider: str, model: str) -> None:
        if not record.is_cached:
            for kind, count in (
                ("prompt", record.prompt_tokens),
                ("completion", record.completion_tokens),
                ("cache_read", record.cache_read_tokens),
                ("cache_write", record.cache_write_tokens),
            ):
                if count:
                    self._child(self.tokens, provider, model, kind).inc(count)
        if record.cost_usd:
            self._child(self.cost, provider, model).inc(float(record.cost_usd))
        if record.cache_saved_usd:
            self._child(self.cache_saved, provider, model).inc(float(record.cache_saved_usd))

    def _observe_attempts(self, record: CallRecord) -> None:
        """Attempts, retries, and the breaker state of every model the call tried."""
        tried: set[str] = set()
        for attempt in record.attempts or ():
            name = str(attempt.get("model", ""))
            entry = self._model(name)
            if entry is None:
                continue
            result = str(attempt.get("error") or attempt.get("status") or "ok")
            if attempt.get("status") and int(attempt["status"]) < 400:
                result = "ok"
            self._child(self.upstream_attempts, entry.provider, entry.name, result).inc()
            if result != "circuit_open":
                if name in tried:
                    self._child(self.upstream_retries, entry.provider, entry.name).inc()
                tried.add(name)
            state = self._breakers.state((entry.provider, entry.upstream_model))
            self._child(self.breaker_state, entry.provider, entry.name).set(BREAKER_VALUES[state])


def refusal_reason(record: CallRecord) -> str | None:
    """Why the gateway refused the call, or None if it did not (answered, or upstream failed).

    A refusal reason set by a stage (screening, rate_limit, quota) wins; other 4xx answers
    the gateway wrote itself are named by status. A provider's own 4xx is no refusal.
    """
    if record.refusal_reason:
        return record.refusal_reason
    if 400 <= record.status < 500 and record.status != 499 and not record.attempts:
        return REFUSAL_BY_STATUS.get(record.status, f"http_{record.status}")
    return None
