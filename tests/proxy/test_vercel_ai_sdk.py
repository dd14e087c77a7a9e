"""The Vercel AI SDK's default OpenAI provider (``openai(model)`` in ``@ai-sdk/openai`` 3.x,
which calls the Responses API) on Node.js against the proxy: generateText and streamText.

The Node package is ``tests/node`` (versions pinned in its package-lock.json); its
node_modules is installed from the npm registry the first time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import RequestRecord
from tests.support import Accounts, ProxyServer, wait_for

if TYPE_CHECKING:
    from tests.proxy.conftest import SimControl

NODE_PACKAGE = Path(__file__).resolve().parent.parent / "node"


@pytest.fixture(scope="session")
def node_package() -> Path:
    """tests/node with its dependencies installed (``npm ci`` when node_modules is missing)."""
    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node"), "Node.js 20+ and npm are needed"
    if not (NODE_PACKAGE / "node_modules" / "ai").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_PACKAGE,
            check=True,
            timeout=300,
        )
    return NODE_PACKAGE


def run_node(package: Path, script: str, env: dict[str, str]) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, script],
        cwd=package,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_generate_text_and_stream_text_through_the_responses_route(
    proxy: ProxyServer, acct: Accounts, sim: SimControl, node_package: Path
) -> None:
    result = run_node(
        node_package,
        "responses.mjs",
        {"OPENAI_BASE_URL": proxy.base_url + "/v1", "OPENAI_API_KEY": acct.key},
    )

    generated, streamed = result["generated"], result["streamed"]
    assert generated["text"] and streamed["text"]
    assert generated["usage"]["outputTokens"] > 0 and streamed["usage"]["outputTokens"] > 0
    upstream = sim.requests()
    assert [r["path"] for r in upstream] == ["/v1/responses", "/v1/responses"]
    assert upstream[-1]["body"]["stream"] is True

    def records() -> list[RequestRecord] | None:
        proxy.flush()
        with Session(proxy.state.engine, expire_on_commit=False) as session:
            rows = list(
                session.scalars(select(RequestRecord).where(RequestRecord.key_id == acct.key_id))
            )
        return rows if len(rows) >= 2 else None

    by_stream = {record.is_stream: record for record in wait_for(records)}
    assert by_stream[False].response_id == generated["responseId"]
    assert by_stream[True].response_id == streamed["responseId"]
    for record, usage in (
        (by_stream[False], generated["usage"]),
        (by_stream[True], streamed["usage"]),
    ):
        assert (record.endpoint, record.status) == ("responses", 200)
        assert record.prompt_tokens == usage["inputTokens"]
        assert record.completion_tokens == usage["outputTokens"]
        assert record.cost_usd > 0
        assert record.user_agent and "ai-sdk" in record.user_agent
