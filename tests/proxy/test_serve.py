"""`metergate serve proxy`: gunicorn workers answer, and SIGTERM flushes every record."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx2
import openai
from sqlalchemy import func, select

from proxy.simulator import SimulatorThread
from shared.db import make_engine, upgrade
from shared.models import RequestRecord
from tests.support import PROVIDER_OPENAI_KEY, seed_accounts, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_gunicorn_workers_serve_and_flush_records_on_sigterm(
    pg_url: str, redis_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    acct = seed_accounts(engine)
    port = free_port()
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": pg_url.replace("postgresql+psycopg://", "postgresql://"),
        "METERGATE_DATA_DIR": str(tmp_path),
        "METERGATE_REDIS_URL": redis_url,
        "OPENAI_API_KEY": PROVIDER_OPENAI_KEY,
        "OPENAI_BASE_URL": simulator.base_url + "/v1",
        "METERGATE_RECORD_FLUSH_SECONDS": "5",  # records stay queued until shutdown flushes them
    }
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "proxy",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def is_up() -> bool:
            try:
                return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx2.HTTPError:
                return False

        wait_for(is_up, timeout=120, interval=0.1)
        ids = [f"serve-{uuid.uuid4()}" for _ in range(12)]
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=acct.key, max_retries=0
        ) as client:
            for request_id in ids:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-request-id": request_id},
                )
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output.decode(errors="replace")[-2000:]
    # The master had the SDK show its headers before it forked: no worker imported it.
    logged = output.decode(errors="replace")
    assert "event=sdk_headers_shown" in logged
    assert "event=upstream_sender_ready sdk=openai headers=shown" in logged
    assert "event=sdk_loaded" not in logged
    with engine.connect() as connection:
        count = connection.scalar(
            select(func.count())
            .select_from(RequestRecord)
            .where(RequestRecord.client_request_id.in_(ids))
        )
    engine.dispose()
    assert count == len(ids)
