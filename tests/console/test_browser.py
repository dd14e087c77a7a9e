"""The console in a real browser: headless Chromium against ``metergate serve console``.

The console runs as its own process (as in production) on a seeded PostgreSQL
database, next to a running proxy it replays through. One browser tab signs in
as an admin and does what people do: searches the conversations, opens one and
replays it, creates a key whose secret shows once, and finally opens every page,
leaving a screenshot of each in ``tests/artifacts/console/``.

Needs Debian's ``chromium`` (``make test`` installs it when missing); without it
the test is skipped locally and fails in CI.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine, select

from console.auth import PAGES
from shared.db import transaction
from shared.models import RequestRecord
from tests.console.conftest import TEST_PASSWORD, make_console_user
from tests.support import Accounts, ProxyServer, seed_accounts, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
PAGES_DIR = Path(__file__).resolve().parents[2] / "console" / "app_pages"
METERGATE = Path(sys.executable).parent / "metergate"
QUESTION = f"Where is parcel {uuid.uuid4().hex[:6]}?"
RUNNING = "[data-testid=stStatusWidgetRunningIcon], [data-testid=stStatusWidgetRunningManIcon]"
PLACEHOLDER = "[data-testid=stSkeleton]"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    pytest.skip("chromium is not installed (make test installs it)", allow_module_level=True)

playwright_sync = pytest.importorskip("playwright.sync_api")
Page = playwright_sync.Page
expect = playwright_sync.expect
expect.set_options(timeout=30_000)  # the console's first run imports pandas, plotly …


@dataclass
class Console:
    url: str
    admin: str
    asker: Accounts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(proxy: ProxyServer, acct: Accounts, text: str, session_id: str) -> None:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=acct.key, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        extra_headers={"x-metergate-session-id": session_id},
    )


@pytest.fixture(scope="module")
def console(
    console_db: str,
    console_engine: Engine,
    console_proxy: ProxyServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Console]:
    """``metergate serve console`` on the seeded database, replaying through the proxy."""
    asker = seed_accounts(console_engine, label=f"browser-{uuid.uuid4().hex[:6]}")
    replayer = seed_accounts(console_engine, label=f"console-{uuid.uuid4().hex[:6]}")
    session_id = f"sess-{uuid.uuid4().hex[:8]}"
    ask(console_proxy, asker, QUESTION, session_id)
    ask(console_proxy, asker, "And when will it arrive?", session_id)
    console_proxy.flush()
    admin = make_console_user(console_engine, "admin")
    port = free_port()
    env = {
        **os.environ,
        "METERGATE_DATABASE_URL": console_db,
        "METERGATE_CONSOLE_PROXY_URL": console_proxy.base_url,
        "METERGATE_CONSOLE_API_KEY": replayer.key,
        "METERGATE_LOG_LEVEL": "WARNING",
    }
    env.pop("METERGATE_CONSOLE_OIDC", None)
    workdir = tmp_path_factory.mktemp("console-cwd")  # no .streamlit/secrets.toml here
    log = (workdir / "console.log").open("w")
    server = subprocess.Popen(
        [str(METERGATE), "serve", "console", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url) or server.poll() is not None, timeout=90, interval=0.5)
        assert server.poll() is None, (workdir / "console.log").read_text()
        yield Console(url, admin.name, asker)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/_stcore/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def page(console: Console) -> Iterator[Page]:
    """One browser tab for the module, signed in as an admin (a reload would sign it out)."""
    with pytest.MonkeyPatch.context() as patch, playwright_sync.sync_playwright() as driver:
        # Headless Chromium may never report its web fonts ready: screenshots must not wait.
        patch.setenv("PW_TEST_SCREENSHOT_NO_FONTS_READY", "1")
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page(viewport={"width": 1440, "height": 1400})
            tab.set_default_timeout(60_000)
            sign_in(tab, console)
            yield tab
        finally:
            browser.close()


def settle(page: Page) -> None:
    """Wait until the app has finished its run, and (briefly) for its placeholders to fill."""
    page.wait_for_timeout(300)
    try:
        page.wait_for_function(f"() => !document.querySelector({RUNNING!r})", polling=200)
    except playwright_sync.TimeoutError:
        shoot(page, "zz-still-running")  # what the page looked like, for whoever reads the failure
        raise
    try:  # charts far below the fold may keep their placeholder until scrolled to
        page.wait_for_function(f"() => !document.querySelector({PLACEHOLDER!r})", timeout=5_000)
    except playwright_sync.TimeoutError:
        pass
    expect(page.get_by_test_id("stException")).to_have_count(0)


def button(page: Page, label: str) -> Any:
    """The app's button with exactly this label (not a toolbar's or a select's icon button)."""
    return page.locator("button").filter(has_text=re.compile(f"^{re.escape(label)}$"))


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, console: Console) -> None:
    page.goto(console.url)
    settle(page)
    page.get_by_role("textbox", name="Name").fill(console.admin)
    page.get_by_role("textbox", name="Password").fill(TEST_PASSWORD)
    shoot(page, "00-sign-in")
    button(page, "Sign in").click()
    expect(page.get_by_text("Signed in as")).to_be_visible()
    settle(page)


def open_page(page: Page, title: str) -> None:
    link = page.get_by_test_id("stSidebarNavLink").filter(has=page.get_by_text(title, exact=True))
    link.click()
    settle(page)


@pytest.mark.timeout(600)
def test_support_searches_a_conversation_and_replays_it(
    page: Page, console: Console, console_engine: Engine
) -> None:
    if "q-submit" not in (PAGES_DIR / "conversations.py").read_text():
        pytest.skip("the conversations page has no search yet")
    open_page(page, "Conversations")
    page.get_by_role("textbox", name="Text in prompts and answers").fill(QUESTION)
    button(page, "Search").click()
    settle(page)
    expect(page.get_by_text(re.compile(r"1 records?"))).to_be_visible()
    shoot(page, "90-search")

    button(page, "Open").click()
    settle(page)
    expect(page.get_by_role("heading", name="Conversation", exact=True)).to_be_visible()
    shoot(page, "91-conversation")

    button(page, "Replay through the proxy").click()
    settle(page)
    expect(page.get_by_text("Replay answer", exact=True)).to_be_visible()
    shoot(page, "92-replay")
    with transaction(console_engine) as session:
        original = session.scalars(
            select(RequestRecord)
            .where(RequestRecord.key_id == console.asker.key_id)
            .order_by(RequestRecord.created_at)
        ).first()
        assert original is not None
    wait_for(lambda: _replays_of(console_engine, original.id), timeout=10)


def _replays_of(engine: Engine, record_id: str) -> list[str]:
    with transaction(engine) as session:
        return list(
            session.scalars(select(RequestRecord.id).where(RequestRecord.replay_of == record_id))
        )


@pytest.mark.timeout(300)
def test_an_admin_creates_a_key_and_sees_its_secret_once(page: Page) -> None:
    open_page(page, "Keys")
    page.get_by_role("textbox", name="Label").fill("made-in-chromium")
    button(page, "Create key").click()
    settle(page)
    secret = page.locator("code").filter(has_text=re.compile(r"^mg-")).first
    expect(secret).to_be_visible()
    assert secret.inner_text().startswith("mg-")
    shoot(page, "93-new-key")
    open_page(page, "Tiers")
    open_page(page, "Keys")
    expect(page.locator("code").filter(has_text=re.compile(r"^mg-"))).to_have_count(0)


@pytest.mark.timeout(600)
def test_an_admin_opens_every_page(page: Page) -> None:
    """Last, so the dashboards and the audit log show what the flows above did."""
    shown = [p for p in PAGES if not p.is_hidden and (PAGES_DIR / p.file).exists()]
    assert len(shown) >= 13
    for number, spec in enumerate(shown, start=1):
        open_page(page, spec.title)
        expect(page.locator("h1").first).to_be_visible()
        expect(page.get_by_text("This page needs the")).to_have_count(0)
        shoot(page, f"{number:02d}-{Path(spec.file).stem}")
