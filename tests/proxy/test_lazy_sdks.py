"""A worker imports a provider's SDK only when it first calls that provider.

``anthropic`` alone holds about 40 MiB per process (and ``openai`` about 26): a gateway
in front of one provider should not carry the other. Checked in a fresh interpreter,
since this test process has both SDKs loaded already: the app is built, one OpenAI call
made through it; then one Anthropic call.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.simulator import SimulatorThread
from shared.db import upgrade

SCRIPT = """
import sys
from pathlib import Path
from tests.support import settings_for, seed_accounts
from proxy.app import create_app
from shared.db import make_engine

db_url, sim_url, data_dir = sys.argv[1:4]
app = create_app(settings_for(db_url, sim_url, Path(data_dir)))
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


def test_each_sdk_is_imported_at_its_providers_first_call(
    db_url: str, simulator: SimulatorThread, tmp_path: Path
) -> None:
    upgrade(db_url)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, db_url, simulator.base_url, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines == [
        "built False False",
        "openai 200 True False",
        "anthropic 200 True True",
    ]
