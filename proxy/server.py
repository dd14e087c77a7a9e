"""Production serving: gunicorn for the proxy, Streamlit for the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from werkzeug.serving import WSGIRequestHandler

CONSOLE_SCRIPT = Path(__file__).resolve().parent.parent / "console" / "streamlit_app.py"


class ProxyApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn running ``create_app()`` in each worker (no preload: state is per process)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from proxy.app import create_app

        return create_app()


def _worker_exit(server: Any, worker: Any) -> None:
    """Flush the worker's queued records before it goes (graceful stop, max_requests)."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("metergate")
    if state is not None:
        state.close()


def run_gunicorn(*, host: str, port: int, workers: int, worker_class: str, threads: int) -> None:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": worker_class,
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 5,
        "limit_request_line": 8190,
        "limit_request_fields": 200,
        "limit_request_field_size": 16384,
        "accesslog": None,
        "worker_exit": _worker_exit,
    }
    if worker_class == "gevent":
        options["worker_connections"] = 2000
    ProxyApplication(options).run()


def run_console(*, host: str, port: int) -> int:
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(CONSOLE_SCRIPT),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    return subprocess.call(command, env=os.environ.copy())


class QuietRequestHandler(WSGIRequestHandler):
    """The development server's handler without a log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None
