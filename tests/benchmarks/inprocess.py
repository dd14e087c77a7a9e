"""CPU per call of the proxy app itself, without gunicorn: calls made through WSGI in-process.

    .venv/bin/python -m tests.benchmarks.inprocess [--calls 4000] [--threads 1] [--stream]
                                                   [--hit] [--floor] [--rounds 3] [--gevent]

The simulator runs in its own process (as in ``tests.benchmarks.perf``); metergate's app
(``create_app``, every feature on: PostgreSQL, Redis, its writer and poll threads) or,
with ``--floor``, the bare forwarder (``tests.benchmarks.floor_app``) is built in this
process and called through WSGI, from one thread or ``--threads`` at once. Each round
prints the CPU per call (this process's, all threads), split by thread, with voluntary
context switches per call (the live threads'). No server, load generator or client
socket shares the measurement, so two versions compare within a few percent where
``perf.py``'s figures move by more: run each version's rounds in turn (``git
worktree`` for the other). With ``--gevent`` the process runs under gevent's patches,
applied after its imports as in a gunicorn gevent worker (whose master imported redis,
psycopg and the rest before the worker patched): what gevent adds to a call shows
(its threads are greenlets, so the CPU is all on one thread). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson

from tests.benchmarks import perf

WARM_UP_CALLS = 300
UNDER_GEVENT = """
import sys
from gevent import monkey
from tests.benchmarks import inprocess  # imported first, as a gunicorn master imports
monkey.patch_all()
from proxy.server import make_psycopg_cooperative
make_psycopg_cooperative()  # as ProxyApplication.load does in a gevent worker
sys.exit(inprocess.main(sys.argv[1:]))
"""


def chat_body(question: str, stream: bool) -> bytes:
    """What ``chat.lua`` sends: a new question each time, so every call is a cache miss."""
    return orjson.dumps(
        {
            "model": perf.MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 256,
            **({"stream": True} if stream else {}),
        }
    )


def thread_cpu() -> dict[str, int]:
    """Nanoseconds on CPU so far, per thread of this process (by name)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        names = {thread_id: "greenlets" for thread_id in names}  # one OS thread for all
    spent: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            on_cpu = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), f"thread {tid}")
        spent[name] = spent.get(name, 0) + on_cpu
    return spent


def voluntary_switches() -> int:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def caller(app: Any, key: str, stream: bool) -> Callable[[str], None]:
    """One chat completion through the app's WSGI callable; the answer is checked."""

    def call(question: str) -> None:
        body = chat_body(question, stream)
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/v1/chat/completions",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": "Bearer " + key,
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
            statuses.append(status)

        answer = app(environ, start_response)
        try:
            data = b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()
        if not statuses[0].startswith("200") or (stream and b"data: [DONE]" not in data):
            raise RuntimeError(f"bad answer: {statuses[0]} {data[:200]!r}")

    return call


def measure(
    call: Callable[[str], None], calls: int, threads: int, same: bool = False
) -> tuple[float, dict[str, float], float]:
    nonce = "the same question" if same else uuid.uuid4().hex
    before, switches = thread_cpu(), voluntary_switches()
    started = time.process_time()  # every thread's, those that end meanwhile included
    if threads == 1:
        for index in range(calls):
            call(f"in-process {nonce}" if same else f"in-process {nonce} {index}")
    else:

        def run(first: int) -> None:
            for index in range(first, calls, threads):
                call(f"in-process {nonce}" if same else f"in-process {nonce} {index}")

        workers = [threading.Thread(target=run, args=(first,)) for first in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    total = (time.process_time() - started) / calls * 1e3
    after = thread_cpu()
    per_thread = {
        name: (spent - before.get(name, 0)) / calls / 1e6
        for name, spent in after.items()
        if spent - before.get(name, 0) > 0
    }
    if threads > 1:  # the calling threads have ended: what the live ones do not account for
        per_thread["calling threads"] = total - sum(per_thread.values())
    return total, per_thread, (voluntary_switches() - switches) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true", help="streamed answers (2 ms a token)")
    parser.add_argument("--floor", action="store_true", help="the bare forwarder instead")
    parser.add_argument("--hit", action="store_true", help="the same question: cache hits")
    parser.add_argument("--gevent", action="store_true", help="under gevent's patches")
    args = parser.parse_args(argv)
    if args.gevent:
        rest = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--gevent"]
        return subprocess.call([sys.executable, "-c", UNDER_GEVENT, *rest])
    with TemporaryDirectory() as tmp, perf.deployment(Path(tmp)) as dep:
        simulator = perf.start_simulator(Path(tmp))
        app: Any = None
        try:
            if args.stream:
                perf.set_simulator(simulator, token_delay_ms=perf.STREAM_TOKEN_DELAY_MS)
            if args.floor:
                from tests.benchmarks.floor_app import create_app as create_floor

                app = create_floor(simulator.base_url)
            else:
                os.environ.update(dep.env(simulator.base_url))
                from proxy.app import create_app

                app = create_app()
            call = caller(app, dep.key, args.stream)
            name = ("floor" if args.floor else "metergate") + (" (hits)" if args.hit else "")
            for index in range(WARM_UP_CALLS):
                call(f"warm-up {index}")
            totals = []
            for round_number in range(1, args.rounds + 1):
                total, per_thread, switches = measure(call, args.calls, args.threads, args.hit)
                totals.append(total)
                threads = ", ".join(
                    f"{thread} {ms:.3f}"
                    for thread, ms in sorted(per_thread.items(), key=lambda item: -item[1])
                    if ms >= 0.01
                )
                print(
                    f"{name} round {round_number}: {total:.3f} ms CPU/call ({threads}),"
                    f" {switches:.1f} voluntary switches/call"
                )
            print(f"{name}: median {statistics.median(totals):.3f} ms CPU/call")
        finally:
            simulator.stop()
            if app is not None and not args.floor:  # its threads stop before the database
                from proxy.app import EXTENSION  # is dropped

                app.extensions[EXTENSION].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
