"""A worker imports a provider's SDK only when it first calls that provider, and not
even then when gunicorn's master has had the SDKs show their headers (``show_headers``).

``anthropic`` alone holds about 40 MiB per process (and ``openai`` about 26): a gateway
in front of one provider should not carry the other. Checked in a fresh interpreter,
since this test process has both SDKs loaded already: the app is built, one OpenAI call
made through it; then one Anthropic call.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from proxy.providers import sdk
from proxy.providers.sdk import LazySdk, sdk_headers, show_headers, timeout_for
from proxy.simulator import SimulatorThread
from shared.db import upgrade

SCRIPT = """
import sys
from pathlib import Path
from tests.support import settings_for, seed_accounts
from proxy.app import create_app
from shared.db import make_engine

db_url, sim_url, data_dir, shown = sys.argv[1:5]
settings = settings_for(db_url, sim_url, Path(data_dir))
if shown == "shown":  # as gunicorn's master does before it forks the workers
    from proxy.providers import show_sdk_headers
    show_sdk_headers(settings)
app = create_app(settings)
print("built", "openai" in sys.modules, "anthropic" in sys.modules)
accounts = seed_accounts(make_engine(db_url))
client = app.test_client()
headers = {"Authorization": f"Bearer {accounts.key}"}
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
answer = client.post("/v1/chat/completions", json=body, headers=headers)
print("openai", answer.status_code, "openai" in sys.modules, "anthropic" in sys.modules)
body = {"model": "claude-haiku-4-5", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]}
answer = client.post("/v1/messages", json=body, headers={"x-api-key": accounts.key})
print("anthropic", answer.status_code, "openai" in sys.modules, "anthropic" in sys.modules)
"""


def run_script(db_url: str, simulator: SimulatorThread, tmp_path: Path, shown: str) -> list[str]:
    upgrade(db_url)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, db_url, simulator.base_url, str(tmp_path), shown],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_each_sdk_is_imported_at_its_providers_first_call(
    db_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    assert run_script(db_url, simulator, tmp_path, "not shown") == [
        "built False False",
        "openai 200 True False",
        "anthropic 200 True True",
    ]


def test_with_the_headers_shown_no_sdk_is_imported_to_call_a_provider(
    db_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    assert run_script(db_url, simulator, tmp_path, "shown") == [
        "built False False",
        "openai 200 False False",
        "anthropic 200 False False",
    ]


@pytest.mark.parametrize(
    ("module", "make", "base_url"),
    [
        ("openai", openai.OpenAI, "http://127.0.0.1:9/v1"),
        ("anthropic", anthropic.Anthropic, "http://127.0.0.1:9"),
    ],
)
def test_shown_headers_are_the_ones_the_sdk_sends_here(
    module: str, make: Any, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subprocess's SDK, interpreter and platform are this process's: its headers
    are the ones this process's own client would send, per-call names included."""
    monkeypatch.setattr(sdk, "_SHOWN", {})
    options: dict[str, Any] = {
        "api_key": "sk-shown-0123",
        "base_url": base_url,
        "max_retries": 0,
        "timeout": timeout_for(3, 20, 40),
    }
    lazy = LazySdk(module, make.__name__, **options)
    show_headers([lazy])
    shown = sdk._SHOWN[lazy.spec]
    assert (shown.headers, shown.per_call) == sdk_headers(make, options)
    assert shown.base_url == str(make(**options).base_url)


def test_headers_that_cannot_be_shown_leave_the_import_to_the_first_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sdk, "_SHOWN", {})
    lazy = LazySdk("no_such_sdk", "Client", api_key="k", timeout=timeout_for(3, 20, 40))
    with caplog.at_level(logging.WARNING, logger=sdk.__name__):
        show_headers([lazy])
    assert sdk._SHOWN == {}
    assert "event=sdk_headers_not_shown" in caplog.text and "no_such_sdk" in caplog.text
