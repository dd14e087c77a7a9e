"""What the openai SDK's request path costs per upstream call, and what the gateway sends.

    .venv/bin/python -m tests.benchmarks.sdk_overhead [--calls 2000] [--rounds 3]

The simulator runs as its own process (``tests.benchmarks.perf``); this process sends
one small chat completion at a time, three ways, through one ``LazySdk`` (the same
``openai.OpenAI`` client and connection pool, the same headers):

- ``sdk``: the SDK's own request path (``proxy.providers.sdk.send_raw``: ``client.post``
  with ``X-Stainless-Raw-Response: stream``, the raw body read unparsed), which the
  gateway used for every upstream call until 1 December 2026;
- ``raw``: what the gateway's hot path does now (``RawSender.post``: the headers the SDK
  sends, captured once, and the per-call ones it would set; an orjson body; its urllib3
  pool, ``direct_pool``; ``tests.benchmarks.clients`` compares the HTTP clients alone);
- ``httpx``: the bare exchange on the SDK's httpx client, with a request built here once
  per call from the same headers and no per-call work: the lower bound for httpx.

It prints this process's CPU per call (user + system, best of the rounds) and wall time
per call, and what each path adds over the bare exchange. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson

from proxy.providers.sdk import LazySdk, sdk_headers, send_raw, timeout_for
from tests.benchmarks.perf import MODEL, start_simulator

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}


def measure(call: Callable[[], None], calls: int, rounds: int) -> tuple[float, float]:
    """(CPU ms per call, wall ms per call), the best round of each."""
    for _ in range(min(200, calls)):
        call()
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call()
        best_cpu = min(best_cpu, (time.process_time() - cpu) * 1000 / calls)
        best_wall = min(best_wall, (time.perf_counter() - wall) * 1000 / calls)
    return best_cpu, best_wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as log_dir:
        simulator = start_simulator(Path(log_dir))
        try:
            sdk = LazySdk(
                "openai",
                "OpenAI",
                api_key="sk-bench-0123456789abcdef",
                base_url=simulator.base_url + "/v1",
                max_retries=0,
                timeout=timeout_for(5, 30, 30),
            )
            client, errors = sdk.get()
            sender = sdk.sender()
            http: Any = client._client
            url = str(client.base_url) + "chat/completions"
            headers = sdk_headers(openai.OpenAI, sdk._options)[0]

            def through_sdk() -> None:
                response = send_raw(client, "POST", "/chat/completions", BODY, {}, errors)
                response.read()

            def through_raw() -> None:
                sender.post("/chat/completions", BODY, {}).read()

            def through_httpx() -> None:
                request = http.build_request(
                    "POST", url, content=orjson.dumps(BODY), headers=headers
                )
                response = http.send(request, stream=True)
                try:
                    response.read()
                finally:
                    response.close()

            figures = {}
            paths = (("sdk", through_sdk), ("raw", through_raw), ("httpx", through_httpx))
            for name, call in paths:
                figures[name] = measure(call, args.calls, args.rounds)
                cpu, wall = figures[name]
                print(f"{name:6s} {cpu:6.3f} ms CPU per call, {wall:6.3f} ms wall")
            bare = figures["httpx"][0]
            for name, what in (("sdk", "the SDK's request path"), ("raw", "RawSender")):
                added = figures[name][0] - bare
                print(
                    f"{what} adds {added:.3f} ms CPU per call over the bare exchange"
                    f" ({100 * added / bare:.0f} %)"
                )
            sdk.close()
        finally:
            simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
