"""Production serving: gunicorn for the proxy, Streamlit for the console."""

from __future__ import annotations

import gc
import importlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import orjson
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from werkzeug.serving import WSGIRequestHandler

from proxy.providers import show_sdk_headers
from shared.settings import Settings

# prometheus_client's multiprocess directory (read by it, so not imported from proxy.metrics:
# importing prometheus_client in the master before this is set would break the workers).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
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

        make_psycopg_cooperative()
        gunicorn_util.write_error = write_json_error  # in this worker: refusals are JSON too
        app = create_app()
        # What the app holds lives as long as the worker: the collector need never walk
        # it again (shorter pauses, and a stopping worker exits without minutes of GC).
        gc.freeze()
        return app


def warm_platform_cache() -> None:
    """Ask ``platform`` what the SDKs ask it, once, in the master: the workers inherit
    the answer instead of each running ``uname -p`` at its first call to a provider.

    The openai and anthropic SDKs put ``platform.platform()`` in their headers, and on
    Linux its first call runs ``uname -p`` in a subprocess. In a gevent worker that is
    gevent's subprocess, which forks in Python: the fork handlers run in the child
    (OpenTelemetry's restarts its exporter thread), and a worker's first calls failed
    now and then (500s from redis-py releasing a connection of another process id,
    503s, a call that never ended, a stray process with the worker's command line).
    With the answer cached here, no worker forks.
    """
    platform.platform()


def make_psycopg_cooperative() -> None:
    """In a gevent worker, have psycopg wait for PostgreSQL the way gevent can switch on.

    psycopg picks how it waits for its socket when first imported: its C wait, unless
    gevent has patched ``select`` by then. The master imports it (to migrate) before
    gunicorn's gevent worker patches anything, so every query the worker made, each of
    the record writer's batches among them, stalled all its calls until PostgreSQL
    answered. Once ``select`` is patched, re-running psycopg's own choice (a reload of
    ``psycopg.waiting``; the connection looks ``waiting.wait`` up at each query) makes it
    take a wait gevent has patched. No-op outside gevent, or before psycopg is imported.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is not None:
        importlib.reload(waiting)


# What gunicorn refuses before the app sees the request (no record: nothing reached it).
_GUNICORN_CODES = {414: "request_line_too_long", 431: "request_header_fields_too_large"}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it refuses itself (request line or headers over the
    limits, malformed HTTP), as an OpenAI-shaped JSON error instead of its HTML page."""
    error = {
        "message": f"{reason}: {mesg}" if mesg else reason,
        "type": "invalid_request_error" if status_int < 500 else "server_error",
        "param": None,
        "code": _GUNICORN_CODES.get(status_int, "invalid_http_request"),
    }
    body = orjson.dumps({"error": error})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _worker_exit(server: Any, worker: Any) -> None:
    """Flush the worker's queued records before it goes (graceful stop, max_requests),
    and drop its live gauges from the metrics."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("metergate")
    if state is not None:
        state.close()
    _forget_live_gauges(worker.pid)


def _child_exit(server: Any, worker: Any) -> None:
    """In the master: also for a worker killed before its worker_exit ran (timeout, OOM)."""
    _forget_live_gauges(worker.pid)


def _forget_live_gauges(pid: int) -> None:
    if os.environ.get(MULTIPROC_DIR_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@contextmanager
def fresh_metrics_dir() -> Iterator[Path]:
    """A new, empty ``PROMETHEUS_MULTIPROC_DIR`` for one server run, removed when it stops.

    Set here, before the workers fork and before they import prometheus_client (which
    picks its storage when imported), so every worker writes its metrics there and a
    scrape of any worker sums them all. Values of an earlier run never leak in.
    """
    owner = os.getpid()
    path = Path(tempfile.mkdtemp(prefix="metergate-metrics-"))
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        if os.getpid() == owner:  # a worker leaves through here too; only the master cleans
            os.environ.pop(MULTIPROC_DIR_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


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
        "child_exit": _child_exit,
    }
    if worker_class == "gevent":
        options["worker_connections"] = 2000
    warm_platform_cache()
    show_sdk_headers(Settings())  # the workers call providers without importing an SDK
    gc.freeze()  # the master's imports and config, shared with the workers it forks
    with fresh_metrics_dir():
        ProxyApplication(options).run()


def run_console(*, host: str, port: int) -> NoReturn:
    """Become the Streamlit server (exec, not a child): a stop signal reaches it directly,
    and no orphaned server outlives a stopped ``metergate serve console``."""
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
        "--client.toolbarMode",
        "viewer",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


class QuietRequestHandler(WSGIRequestHandler):
    """The development server's handler without a log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None
