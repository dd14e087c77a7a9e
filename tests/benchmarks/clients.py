"""What one upstream exchange costs through each HTTP client the gateway could use.

    .venv/bin/python -m tests.benchmarks.clients [--calls 1000] [--streams 150] [--rounds 3]

The simulator runs as its own process (``tests.benchmarks.perf``); this process sends
small chat completions to it, one at a time, and reads each answer whole, or a stream
(37 chunks, 2 ms apart, each read as it comes), through:

- ``httpx``: an ``httpx2.Client`` (the SDKs' client; ``RawSender`` without a pool);
- ``urllib3``: a ``urllib3`` connection pool, as ``RawSender`` sends (``direct_pool``);
- ``http.client``: one kept-alive ``http.client.HTTPConnection``, no pool: the floor
  for a Python client (whole answers only).

It prints this process's CPU per call (user + system, best of the rounds), and per
streamed chunk beyond a whole answer's cost. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx2
import orjson
import urllib3

from proxy.providers.sdk import Urllib3Body
from tests.benchmarks.perf import MODEL, STREAM_TOKEN_DELAY_MS, set_simulator, start_simulator

HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
PATH = "/v1/chat/completions"


def body(stream: bool) -> bytes:
    question = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    return orjson.dumps({**question, "max_tokens": 256, **({"stream": True} if stream else {})})


def best_cpu_ms(call: Callable[[], int], calls: int, rounds: int) -> float:
    for _ in range(min(50, calls)):
        call()
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, (time.process_time() - started) * 1000 / calls)
    return best


def clients(base_url: str) -> dict[str, Callable[[bytes], int]]:
    """Each client's exchange: send ``content``, read the answer as it comes, return the
    number of reads it took."""
    host, port = base_url.removeprefix("http://").split(":")
    through_httpx = httpx2.Client(timeout=30)
    pool = urllib3.PoolManager(maxsize=10, block=False).connection_from_url(base_url)
    connection = http.client.HTTPConnection(host, int(port))

    def with_httpx(content: bytes) -> int:
        request = through_httpx.build_request(
            "POST", base_url + PATH, content=content, headers=HEADERS
        )
        response = through_httpx.send(request, stream=True)
        reads = sum(1 for _ in response.iter_raw())
        response.close()
        return reads

    def with_urllib3(content: bytes) -> int:
        response = pool.urlopen(
            "POST",
            PATH,
            body=content,
            headers=HEADERS,
            retries=False,
            preload_content=False,
            decode_content=False,
        )
        source = Urllib3Body(response)  # as the gateway reads it
        reads = sum(1 for _ in source.chunks())
        source.close()
        return reads

    def with_http_client(content: bytes) -> int:
        connection.request("POST", PATH, body=content, headers=HEADERS)
        response = connection.getresponse()
        reads = 0
        while response.read1(65536):
            reads += 1
        response.read()  # read1 leaves the response open at its end
        return reads

    return {"httpx": with_httpx, "urllib3": with_urllib3, "http.client": with_http_client}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as log_dir:
        simulator = start_simulator(Path(log_dir))
        try:
            exchanges = clients(simulator.base_url)
            whole = {
                name: best_cpu_ms(partial(call, body(False)), args.calls, args.rounds)
                for name, call in exchanges.items()
            }
            set_simulator(simulator, token_delay_ms=STREAM_TOKEN_DELAY_MS)
            for name, call in exchanges.items():
                if name == "http.client":  # the floor for whole answers only
                    print(f"{name:12s} whole answer {whole[name]:.3f} ms CPU", flush=True)
                    continue
                chunks = call(body(True))
                streamed = best_cpu_ms(partial(call, body(True)), args.streams, 1)
                per_chunk = (streamed - whole[name]) * 1000 / chunks
                print(
                    f"{name:12s} whole answer {whole[name]:.3f} ms CPU;"
                    f" stream of {chunks} reads {streamed:.3f} ms ({per_chunk:.1f} µs a read)",
                    flush=True,
                )
        finally:
            simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
