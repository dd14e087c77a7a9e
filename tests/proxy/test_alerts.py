"""`metergate serve proxy` runs the background job: a budget crossed through the proxy
reaches a real webhook once per threshold, however many passes the job makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openai
from sqlalchemy import select

from proxy.simulator import SimulatorThread
from shared.accounts import Limits
from shared.background import LEASE_NAME
from shared.db import make_engine, upgrade
from shared.models import DeploymentSetting, User
from shared.rollup import as_utc
from shared.usage import month_of
from tests.proxy.test_serve import free_port
from tests.shared.webhook_receiver import WebhookReceiver
from tests.support import PROVIDER_OPENAI_KEY, seed_accounts, wait_for


def test_serve_proxy_sends_each_crossed_budget_threshold_once(
    pg_url: str, redis_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    # A budget one small call takes a few percent of (the gateway never overspends one):
    # with thresholds of 1 and 2 %, both are crossed at once.
    acct = seed_accounts(engine, limits=Limits(monthly_usd=Decimal("0.0003")))
    with engine.connect() as connection:
        user_id = connection.scalar(select(User.id).where(User.email == acct.user))
    expected = Counter(
        {f"budget:user:{user_id}:{month_of(datetime.now(UTC))}:{p}": 1 for p in (1, 2)}
    )
    port = free_port()
    with WebhookReceiver() as receiver:

        def mine() -> Counter[str]:
            prefix = f"budget:user:{user_id}:"
            return Counter(
                {k: n for k, n in receiver.posted_keys().items() if k.startswith(prefix)}
            )

        def lease_renewed_after(at: datetime) -> bool:
            with engine.connect() as connection:
                renewed = connection.scalar(
                    select(DeploymentSetting.updated_at).where(DeploymentSetting.name == LEASE_NAME)
                )
            return renewed is not None and as_utc(renewed) > at

        env = {
            **os.environ,
            "METERGATE_DATABASE_URL": pg_url,
            "METERGATE_DATA_DIR": str(tmp_path),
            "METERGATE_REDIS_URL": redis_url,
            "OPENAI_API_KEY": PROVIDER_OPENAI_KEY,
            "OPENAI_BASE_URL": simulator.base_url + "/v1",
            "METERGATE_ALERT_WEBHOOK_URLS": receiver.url,
            "METERGATE_ALERT_INTERVAL_SECONDS": "0.2",
            "METERGATE_ALERT_THRESHOLDS_PERCENT": "1,2",
            "METERGATE_RECORD_FLUSH_SECONDS": "0.05",
        }
        command = [sys.executable, "-m", "proxy.cli", "serve", "proxy", "--port", str(port)]
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:

            def is_up() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
                except httpx.HTTPError:
                    return False

            wait_for(is_up, timeout=120, interval=0.1)
            with openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=acct.key, max_retries=0
            ) as client:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"spend {uuid.uuid4()}"}],
                    max_tokens=16,
                )
            wait_for(lambda: mine() == expected, timeout=60)
            # Later passes (the job renews its lease on each) send nothing again.
            seen_all = datetime.now(UTC)
            wait_for(lambda: lease_renewed_after(seen_all + timedelta(seconds=1)), timeout=30)
        finally:
            server.send_signal(signal.SIGTERM)
            output, _ = server.communicate(timeout=60)
            engine.dispose()
    assert server.returncode == 0, output.decode(errors="replace")[-2000:]
    assert mine() == expected
