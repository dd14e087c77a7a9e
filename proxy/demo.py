"""``metergate demo``: the whole product on the embedded default, in one command.

SQLite, in-process limits and cache, the simulated upstream in this process.
Seeds two tenants, tiers, users and keys, sends a few hundred varied calls
through the proxy with the real SDKs, then keeps serving the proxy and the
console beside it (a ``demo`` admin with a fresh password each run, and the
console's own key for replays).
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import anthropic
import click
import openai
from pydantic import SecretStr
from sqlalchemy import select
from werkzeug.serving import make_server

from proxy.app import create_app
from proxy.server import QuietRequestHandler
from proxy.simulator import SimulatorConfig, SimulatorThread
from shared import accounts, console_users
from shared.accounts import AccountError, Limits
from shared.db import engine_for, transaction, upgrade
from shared.models import Tenant
from shared.settings import Settings

DEMO_TENANTS = {"acme": Decimal("500"), "globex": Decimal("200")}
DEMO_TIERS = {
    "free": Limits(rpm=600, tpm=200_000, monthly_usd=Decimal("5"), max_tokens=1024),
    "pro": Limits(rpm=6000, tpm=2_000_000, monthly_usd=Decimal("100"), max_tokens=4096),
}
DEMO_USERS = {
    "ada@acme.example": ("acme", "pro"),
    "bob@acme.example": ("acme", "free"),
    "cy@globex.example": ("globex", "pro"),
}
# The console's own account: replays from the console are billed here, not to the user.
CONSOLE_TENANT, CONSOLE_USER = "metergate-console", "replays@console.local"
CONSOLE_ADMIN = "demo"
QUESTIONS = [
    "What is the capital of France?",
    "Summarise the plot of Hamlet in two sentences.",
    "Write a haiku about rate limits.",
    "Explain what a circuit breaker does in distributed systems.",
    "How do I reverse a list in Python?",
    "Give me three names for a coffee shop.",
]
OPENAI_MODELS = ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"]
ANTHROPIC_MODELS = ["claude-haiku-4-5", "claude-sonnet-4-6"]


def demo_settings() -> Settings:
    """The environment's settings, with the providers pointed at the in-process simulator."""
    return Settings()


def seed(settings: Settings) -> dict[str, str]:
    """Create the demo accounts (once) and a fresh key per user; returns email -> key."""
    engine = engine_for(settings)
    keys: dict[str, str] = {}
    try:
        with transaction(engine) as session:
            if session.scalar(select(Tenant).where(Tenant.name == "acme")) is None:
                for name, cap in DEMO_TENANTS.items():
                    accounts.create_tenant(session, name, cap)
                for name, limits in DEMO_TIERS.items():
                    try:
                        accounts.create_tier(session, name, limits)
                    except AccountError:
                        pass  # a tier of that name exists already: keep it
                for email, (tenant, tier) in DEMO_USERS.items():
                    accounts.create_user(session, email, tenant, tier)
            for email in DEMO_USERS:
                _, keys[email] = accounts.create_key(session, email, name="demo", environment="dev")
    finally:
        engine.dispose()
    return keys


def send_traffic(base_url: str, keys: dict[str, str], count: int) -> Counter[str]:
    """Send ``count`` varied calls (both dialects, streamed and not, some refused)."""
    rng = random.Random(42)
    outcomes: Counter[str] = Counter()
    emails = list(keys)
    jobs: list[Callable[[], str]] = []
    for index in range(count):
        email = emails[index % len(emails)]
        key = keys[email]
        question = rng.choice(QUESTIONS)
        session = f"demo-session-{index // 6}"
        end_user = f"end-user-{rng.randint(1, 12)}"
        kind = rng.random()
        if kind < 0.45:
            jobs.append(
                _openai_job(
                    base_url,
                    key,
                    rng.choice(OPENAI_MODELS),
                    question,
                    session,
                    end_user,
                    stream=rng.random() < 0.4,
                )
            )
        elif kind < 0.9:
            jobs.append(
                _anthropic_job(
                    base_url,
                    key,
                    rng.choice(ANTHROPIC_MODELS),
                    question,
                    session,
                    end_user,
                    stream=rng.random() < 0.4,
                )
            )
        elif kind < 0.95:
            jobs.append(
                _openai_job(
                    base_url,
                    "mg-not-a-real-key-000000000",
                    "gpt-4o-mini",
                    question,
                    session,
                    end_user,
                    stream=False,
                )
            )
        else:
            jobs.append(
                _openai_job(base_url, key, "gpt-unknown", question, session, end_user, stream=False)
            )
    with ThreadPoolExecutor(max_workers=8) as pool:
        for outcome in pool.map(lambda job: job(), jobs):
            outcomes[outcome] += 1
    return outcomes


def _openai_job(
    base_url: str,
    key: str,
    model: str,
    question: str,
    session: str,
    end_user: str,
    *,
    stream: bool,
) -> Callable[[], str]:
    def run() -> str:
        with openai.OpenAI(
            base_url=base_url + "/v1",
            api_key=key,
            max_retries=0,
            default_headers={"x-metergate-session-id": session},
        ) as client:
            try:
                messages: Any = [{"role": "user", "content": question}]
                if stream:
                    for _ in client.chat.completions.create(
                        model=model, messages=messages, stream=True, user=end_user
                    ):
                        pass
                else:
                    client.chat.completions.create(model=model, messages=messages, user=end_user)
                return "ok"
            except openai.APIStatusError as exc:
                return f"refused {exc.status_code}"

    return run


def _anthropic_job(
    base_url: str,
    key: str,
    model: str,
    question: str,
    session: str,
    end_user: str,
    *,
    stream: bool,
) -> Callable[[], str]:
    def run() -> str:
        with anthropic.Anthropic(
            base_url=base_url,
            api_key=key,
            max_retries=0,
            default_headers={"x-metergate-session-id": session},
        ) as client:
            try:
                messages: Any = [{"role": "user", "content": question}]
                metadata: Any = {"user_id": end_user}
                if stream:
                    with client.messages.stream(
                        model=model, max_tokens=300, messages=messages, metadata=metadata
                    ) as events:
                        events.get_final_message()
                else:
                    client.messages.create(
                        model=model, max_tokens=300, messages=messages, metadata=metadata
                    )
                return "ok"
            except anthropic.APIStatusError as exc:
                return f"refused {exc.status_code}"

    return run


def run_demo(*, port: int, request_count: int, keep_serving: bool, console_port: int) -> None:
    simulator = SimulatorThread(SimulatorConfig(latency_ms=40, token_delay_ms=4)).start()
    settings = demo_settings().model_copy(
        update={
            "openai_api_key": SecretStr("sk-demo-simulated-openai"),
            "openai_base_url": simulator.base_url + "/v1",
            "anthropic_api_key": SecretStr("sk-ant-demo-simulated"),
            "anthropic_base_url": simulator.base_url,
        }
    )
    upgrade(settings.effective_database_url)
    keys = seed(settings)
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietRequestHandler)
    base_url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    click.echo(f"metergate demo: proxy on {base_url}, simulated upstream on {simulator.base_url}")
    click.echo(f"database: {settings.effective_database_url}")
    click.echo(
        f"sending {request_count} calls through the proxy with the openai and anthropic SDKs…"
    )
    outcomes = send_traffic(base_url, keys, request_count)
    app.extensions["metergate"].writer.flush()
    click.echo("outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    demo_key = keys["ada@acme.example"]
    click.echo(_snippet(base_url, demo_key))
    if not keep_serving:
        server.shutdown()
        app.extensions["metergate"].close()
        simulator.stop()
        return
    console = start_console(settings, base_url, console_port)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        console.terminate()
        console.wait(15)
        server.shutdown()
        app.extensions["metergate"].close()
        simulator.stop()
        sys.exit(0)


def start_console(settings: Settings, proxy_url: str, port: int) -> subprocess.Popen[bytes]:
    """``metergate serve console`` on the demo's database, replaying through the demo proxy
    with the console's own key; prints where it is and how to sign in."""
    password, console_key = console_accounts(settings)
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": settings.effective_database_url,
        "METERGATE_CONSOLE_PROXY_URL": proxy_url,
        "METERGATE_CONSOLE_API_KEY": console_key,
    }
    command = [sys.executable, "-m", "proxy.cli", "serve", "console", "--port", str(port)]
    console = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    click.echo(
        f"console on http://127.0.0.1:{port}: sign in as {CONSOLE_ADMIN!r} with password"
        f" {password!r} (new each run). Ctrl-C stops both."
    )
    return console


def console_accounts(settings: Settings) -> tuple[str, str]:
    """The ``demo`` console admin with a fresh password, and a fresh key of the console's
    own account for replays. Returns (password, key)."""
    password = secrets.token_urlsafe(12)
    engine = engine_for(settings)
    try:
        with transaction(engine) as session:
            admin = console_users.find_console_user(session, CONSOLE_ADMIN)
            if admin is None:
                console_users.create_console_user(session, CONSOLE_ADMIN, "admin", password)
            else:
                admin.password_hash = console_users.hash_password(password)
                admin.role, admin.is_disabled = "admin", False
            if session.scalar(select(Tenant).where(Tenant.name == CONSOLE_TENANT)) is None:
                accounts.create_tenant(session, CONSOLE_TENANT)
                accounts.create_user(session, CONSOLE_USER, CONSOLE_TENANT, "pro")
            _, key = accounts.create_key(session, CONSOLE_USER, name="console", environment="dev")
    finally:
        engine.dispose()
    return password, key


def _snippet(base_url: str, key: str) -> str:
    return f"""
demo key (user ada@acme.example): {key}

    from openai import OpenAI
    client = OpenAI(base_url="{base_url}/v1", api_key="{key}")
    print(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{{"role": "user", "content": "hello"}}]
    ).choices[0].message.content)
"""
