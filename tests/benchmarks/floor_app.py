"""The benchmark's floor: the least a Python gateway can do, a Flask app that forwards.

Served by gunicorn exactly as the proxy is (same workers, worker class, threads and
keep-alive), it forwards every POST under ``/v1/`` to ``FLOOR_UPSTREAM`` with one pooled
httpx client per worker, and streams the answer back unchanged. No auth, no limits, no
records: what is left is Flask, gunicorn, httpx and the network, the cost every Python
gateway pays before doing anything of its own.

    gunicorn -w 2 -k gthread --threads 32 'tests.benchmarks.floor_app:create_app()'
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
from flask import Flask, Response, request

UPSTREAM_ENV = "FLOOR_UPSTREAM"
PASSED_HEADERS = ("content-type", "authorization", "x-api-key", "anthropic-version")


def create_app(upstream: str | None = None) -> Flask:
    base_url = upstream or os.environ[UPSTREAM_ENV]
    client = httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
    )
    app = Flask(__name__)

    @app.post("/v1/<path:path>")
    def forward(path: str) -> Response:
        headers = {
            name: request.headers[name] for name in PASSED_HEADERS if name in request.headers
        }
        sent = client.build_request(
            "POST", "/v1/" + path, content=request.get_data(), headers=headers
        )
        upstream_response = client.send(sent, stream=True)
        content_type = upstream_response.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):

            def relay() -> Iterator[bytes]:
                try:
                    yield from upstream_response.iter_raw()
                finally:
                    upstream_response.close()

            return Response(
                relay(), status=upstream_response.status_code, content_type=content_type
            )
        body = upstream_response.read()
        upstream_response.close()
        return Response(body, status=upstream_response.status_code, content_type=content_type)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
