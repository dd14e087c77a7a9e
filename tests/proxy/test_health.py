"""``/healthz`` (the process answers) and ``/readyz`` (database, Redis, record writer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.app import REDIS_NOT_USED, create_app
from tests.support import ProxyServer, settings_for

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def test_healthz_answers_while_the_process_lives(proxy: ProxyServer) -> None:
    response = proxy.app.test_client().get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_readyz_reports_each_dependency(proxy: ProxyServer) -> None:
    response = proxy.app.test_client().get("/readyz")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "redis": REDIS_NOT_USED, "record_writer": "ok"}
    assert body["record_queue_depth"] >= 0 and body["spool_files"] == 0


@pytest.mark.parametrize(
    ("redis", "status", "state"),
    [("<test redis>", 200, "ok"), (UNREACHABLE_REDIS, 503, "unavailable: ConnectionError")],
)
def test_readyz_needs_redis_when_it_is_configured(
    pg_url: str, redis_url: str, tmp_path: Path, redis: str, status: int, state: str
) -> None:
    settings = settings_for(
        pg_url, "http://127.0.0.1:9", tmp_path, redis_url=redis.replace("<test redis>", redis_url)
    )
    app = create_app(settings, start_background=False)
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["metergate"].close()
    assert response.status_code == status
    assert response.json["checks"]["redis"] == state
    assert response.json["status"] == ("ready" if status == 200 else "not ready")
