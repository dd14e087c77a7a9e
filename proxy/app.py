"""The Flask app factory. All wiring happens here; nothing connects at import time."""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from redis import BlockingConnectionPool, Redis
from sqlalchemy import Engine, text
from werkzeug.exceptions import HTTPException

from proxy.cache import build_response_cache
from proxy.config_cache import ConfigCache
from proxy.errors import ANTHROPIC, OPENAI, GatewayError, MethodNotAllowed, NotFound
from proxy.jwt_auth import build_token_auth
from proxy.metrics import Metrics
from proxy.pipeline import Gateway, Pipeline, begin
from proxy.providers import build_providers
from proxy.providers.base import Provider
from proxy.quota import Quotas, build_quotas
from proxy.ratelimit import RateLimits, build_rate_limits
from proxy.read_deadline import ReadDeadlines
from proxy.readiness import RedisParser
from proxy.recorder import RecordWriter
from proxy.resilience import Resilience
from proxy.response_owners import build_response_owners
from proxy.routes import admin, anthropic, feedback, openai
from proxy.sentry import close_sentry, init_sentry
from proxy.tracing import build_tracing
from shared.db import engine_for
from shared.settings import Settings

log = logging.getLogger(__name__)
EXTENSION = "metergate"
SDK_LOGGERS = ("openai", "anthropic")
REDIS_NOT_USED = "not used (embedded mode)"
REDIS_MAX_CONNECTIONS = 1000  # per process


@dataclass(slots=True)
class AppState:
    """Per-app state, at ``app.extensions["metergate"]``."""

    settings: Settings
    engine: Engine
    config: ConfigCache
    writer: RecordWriter
    providers: dict[str, Provider]
    pipeline: Pipeline
    redis: Redis | None = None
    rate_limits: RateLimits | None = None
    quotas: Quotas | None = None

    def close(self) -> None:
        """Flush records and release connections (tests, graceful shutdown)."""
        self.config.stop()
        self.writer.close()
        for provider in self.providers.values():
            provider.close()
        if self.pipeline.gateway.tracing is not None:
            self.pipeline.gateway.tracing.close()
        close_sentry(self.settings)
        if self.redis is not None:
            self.redis.close()
        self.engine.dispose()


def create_app(
    settings: Settings | None = None,
    *,
    providers: dict[str, Provider] | None = None,
    start_background: bool = True,
) -> Flask:
    """Build the proxy. ``settings`` defaults to the environment."""
    settings = settings or Settings()
    _keep_prompts_out_of_logs()
    init_sentry(settings)  # per process, like everything here; off without a DSN
    app = Flask(__name__)
    # One byte over the limit, so read_body can tell "exactly the limit" from "over it".
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    engine = engine_for(settings)
    config = ConfigCache(engine, poll_seconds=settings.config_poll_seconds)
    config.tokens = build_token_auth(settings, config)  # None: gateway keys only
    writer = RecordWriter(
        engine,
        settings.effective_spool_dir,
        batch_size=settings.record_batch_size,
        flush_seconds=settings.record_flush_seconds,
    )
    providers = providers if providers is not None else build_providers(settings)
    redis_client = _redis_for(settings.redis_url) if settings.redis_url else None
    gateway = Gateway(
        config=config,
        providers=providers,
        writer=writer,
        max_body_bytes=settings.max_body_bytes,
        read_deadlines=ReadDeadlines(settings.body_read_timeout_seconds),
        trust_forwarded_for=settings.trust_forwarded_for,
        redis=redis_client,
        cache=build_response_cache(settings, redis_client),
        max_messages=settings.max_messages,
        output_retries=settings.output_retries,
        resilience=Resilience.from_settings(settings),
        rate_limits=build_rate_limits(app, settings, redis_client),
        quotas=build_quotas(settings, engine, config, redis_client),
        owners=build_response_owners(engine, redis_client, settings.response_owner_ttl_seconds),
        tracing=build_tracing(settings),  # per process: create_app runs in each worker
    )
    gateway.metrics = Metrics(writer, gateway.resilience.breakers, config.model)
    state = AppState(
        settings,
        engine,
        config,
        writer,
        providers,
        Pipeline(gateway),
        redis=redis_client,
        rate_limits=gateway.rate_limits,
        quotas=gateway.quotas,
    )
    app.extensions[EXTENSION] = state
    if start_background:
        writer.start()
        config.start()

    app.register_blueprint(openai.blueprint)
    app.register_blueprint(anthropic.blueprint)
    app.register_blueprint(feedback.blueprint)
    app.register_blueprint(admin.blueprint)
    _register_health(app, state)
    _register_error_handlers(app, state)
    return app


def _redis_for(url: str) -> Redis:
    """One client per process. Its pool blocks (up to the command timeout) for a free
    connection instead of failing: a worker holding hundreds of calls at once (gevent,
    many threads) can have more commands in flight than redis-py's default 100.

    Its free connections wait in ``queue.LifoQueue`` as this process has it now: in a
    gevent worker, gevent's, since gevent patched ``queue``. redis-py's default is the
    class it imported, which the gunicorn master imported before any patch: under gevent
    each of its get and put ran a failing non-blocking lock acquire that gevent turns
    into a trip round its hub (8 us a connection's get and put, against 0.2, measured).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        queue_class=queue.LifoQueue,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=2.0,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        parser_class=RedisParser,  # checks an idle connection without gevent's poll
    )
    return Redis(connection_pool=pool)


def _keep_prompts_out_of_logs() -> None:
    """The provider SDKs log whole request bodies (prompts, and any secret in them) at
    DEBUG, also when ``OPENAI_LOG`` / ``ANTHROPIC_LOG`` ask for it: never below INFO."""
    for name in SDK_LOGGERS:
        sdk_log = logging.getLogger(name)
        if sdk_log.getEffectiveLevel() < logging.INFO:
            sdk_log.setLevel(logging.INFO)


def _register_health(app: Flask, state: AppState) -> None:
    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, Any], int]:
        checks: dict[str, str] = {}
        try:
            with state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["redis"] = _redis_state(state.redis)
        checks["record_writer"] = "spooling" if state.writer.is_db_down else "ok"
        is_ready = checks["database"] == "ok" and checks["redis"] in ("ok", REDIS_NOT_USED)
        body = {
            "status": "ready" if is_ready else "not ready",
            "checks": checks,
            "record_queue_depth": state.writer.queue_depth,
            "spool_files": len(state.writer.spool_files()),
        }
        return body, 200 if is_ready else 503

    @app.get("/metrics")
    def metrics() -> Response:
        assert state.pipeline.gateway.metrics is not None
        text_format, content_type = state.pipeline.gateway.metrics.render()
        return Response(text_format, content_type=content_type)


def _redis_state(redis: Redis | None) -> str:
    if redis is None:
        return REDIS_NOT_USED
    try:
        redis.ping()
    except Exception as exc:  # readiness reports, it does not raise
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def _dialect_for_path(path: str) -> str:
    if path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return ANTHROPIC
    return OPENAI


def _register_error_handlers(app: Flask, state: AppState) -> None:
    """Whatever goes wrong outside the pipeline still gets a JSON error and a record."""

    def refuse(error: GatewayError) -> Response:
        ctx = begin(
            request,
            _dialect_for_path(request.path),
            request.path[:200],
            state.settings.trust_forwarded_for,
        )
        return state.pipeline.refuse(ctx, error)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if admin.is_admin_path(request.path):  # the admin API answers for itself, unrecorded
            return admin.http_error(exc)
        if exc.code == 404:
            return refuse(
                NotFound(f"Unknown route: {request.method} {request.path}.", code="unknown_route")
            )
        if exc.code == 405:
            return refuse(MethodNotAllowed(f"Method {request.method} is not allowed here."))
        return refuse(GatewayError(exc.description or "Bad request.", status=exc.code or 400))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("event=unhandled_error path=%s", request.path)
        if admin.is_admin_path(request.path):
            return admin.internal_error()
        return refuse(GatewayError("The gateway failed to handle this request."))
