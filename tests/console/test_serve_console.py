"""``metergate serve console`` starts the console as its own process, as in production."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for

METERGATE = Path(sys.executable).parent / "metergate"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(180)
def test_serve_console_answers_on_its_port(console_db: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "METERGATE_DATABASE_URL": console_db}
    server = subprocess.Popen(
        [str(METERGATE), "serve", "console", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(base + "/_stcore/health") or server.poll() is not None, 90, 0.5)
        assert server.poll() is None, "the console exited"
        page = httpx.get(base + "/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=15)
