"""What the openai SDK's request path costs over its own httpx client, per upstream call.

    .venv/bin/python -m tests.benchmarks.sdk_overhead [--calls 2000] [--rounds 3]

The simulator runs as its own process (``tests.benchmarks.perf``); this process sends
one small chat completion at a time, two ways, through the same ``openai.OpenAI``
client (same connection pool, same headers):

- ``sdk``: what the gateway does (``proxy.providers.sdk.send_raw``: ``client.post`` with
  ``X-Stainless-Raw-Response: stream``, the raw body read unparsed);
- ``httpx``: the SDK's own httpx client, given a request built here from the SDK's
  default headers (auth included) and an orjson body.

It prints this process's CPU per call (user + system, best of the rounds) and wall time
per call, and what the SDK's layers add: the figure the README weighs when it keeps the
SDK on the upstream path. Not collected by pytest.
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

from proxy.providers.sdk import send_raw, timeout_for
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
            client = openai.OpenAI(
                api_key="sk-bench-0123456789abcdef",
                base_url=simulator.base_url + "/v1",
                max_retries=0,
                timeout=timeout_for(5, 30, 30),
            )
            errors = (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)
            http: Any = client._client
            url = str(client.base_url) + "chat/completions"
            headers = {
                name: value
                for name, value in client.default_headers.items()
                if isinstance(value, str)
            }
            headers["content-type"] = "application/json"

            def through_sdk() -> None:
                response = send_raw(client, "POST", "/chat/completions", BODY, {}, errors)
                response.read()

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
            for name, call in (("sdk", through_sdk), ("httpx", through_httpx)):
                figures[name] = measure(call, args.calls, args.rounds)
                cpu, wall = figures[name]
                print(f"{name:6s} {cpu:6.3f} ms CPU per call, {wall:6.3f} ms wall")
            added = figures["sdk"][0] - figures["httpx"][0]
            print(
                f"the SDK's layers add {added:.3f} ms CPU per call"
                f" ({100 * added / figures['httpx'][0]:.0f} % of the bare httpx exchange)"
            )
            client.close()
        finally:
            simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
