"""Soak: minutes of mixed traffic against gunicorn + PostgreSQL + Redis + the simulator.

    .venv/bin/python -m tests.benchmarks.soak [--minutes 10] [--rate 20] [--threads 4]

Starts its own of everything (a fresh PostgreSQL database, a private redis-server, the
simulator, ``metergate serve proxy`` with two workers), then sends both dialects,
streamed and not, repeated questions (cache hits), and refusals (a bad key, a spent
quota, a per-minute limit, malformed JSON, too many messages, an upstream failure) at
``--rate`` calls a second, for ``--minutes``. It reports:

- every answer by kind; an answer that is not the one its kind expects is an error;
- the proxy's RSS (master and workers) after the warm-up and at the end: growth < 10 %;
- the record writers' queues and spools, drained after the traffic (``/readyz``);
- every request id sent, present exactly once in the database.

Exit status 0 when every check holds, 1 otherwise. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx2

from proxy.simulator import SimulatorConfig, SimulatorThread
from shared.accounts import Limits
from shared.db import make_engine, upgrade
from tests.reliability.conftest import proxy_env, record_counts
from tests.reliability.services import GunicornProxy, RedisServer, rss_bytes
from tests.reliability.traffic import Outcome, body_for, new_request_id, send
from tests.support import create_pg_database, drop_pg_database, seed_accounts, wait_for

RSS_GROWTH_LIMIT = 0.10
WARM_UP_SHARE = 0.15  # of the run, before the starting RSS is taken


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    expected: frozenset[int]
    call: Callable[[httpx2.Client, dict[str, str], int], Outcome]


def _unique(dialect: str, stream: bool) -> Callable[[httpx2.Client, dict[str, str], int], Outcome]:
    def call(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
        body = body_for(dialect, f"soak question {n} {random.random()}", stream=stream)
        return send(client, dialect, keys["main"], body, request_id=new_request_id("soak"))

    return call


def _repeated(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
    dialect = "openai" if n % 2 else "anthropic"
    body = body_for(dialect, f"frequently asked question {n % 20}", stream=n % 3 == 0)
    return send(client, dialect, keys["main"], body, request_id=new_request_id("soak"))


def _with_key(name: str) -> Callable[[httpx2.Client, dict[str, str], int], Outcome]:
    def call(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
        dialect = "openai" if n % 2 else "anthropic"
        body = body_for(dialect, f"refused {n}")
        return send(client, dialect, keys[name], body, request_id=new_request_id("soak"))

    return call


def _malformed(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
    return send(client, "openai", keys["main"], b'{"model": ', request_id=new_request_id("soak"))


def _too_many_messages(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
    body = body_for("anthropic", "x", messages=[{"role": "user", "content": "x"}] * 1001)
    return send(client, "anthropic", keys["main"], body, request_id=new_request_id("soak"))


def _upstream_failure(client: httpx2.Client, keys: dict[str, str], n: int) -> Outcome:
    body = body_for("openai", "fail", sim_fault="500")
    return send(client, "openai", keys["main"], body, request_id=new_request_id("soak"))


KINDS = [
    Kind("openai", 20, frozenset({200}), _unique("openai", False)),
    Kind("openai stream", 12, frozenset({200}), _unique("openai", True)),
    Kind("anthropic", 20, frozenset({200}), _unique("anthropic", False)),
    Kind("anthropic stream", 12, frozenset({200}), _unique("anthropic", True)),
    Kind("repeated (cache)", 16, frozenset({200}), _repeated),
    Kind("bad key", 4, frozenset({401}), _with_key("bad")),
    Kind("spent quota", 4, frozenset({429}), _with_key("spent")),
    Kind("per-minute limit", 6, frozenset({200, 429}), _with_key("limited")),
    Kind("malformed JSON", 2, frozenset({400}), _malformed),
    Kind("too many messages", 2, frozenset({400}), _too_many_messages),
    Kind("upstream failure", 2, frozenset({502}), _upstream_failure),
]


class Load:
    """``threads`` clients sending ``rate`` calls a second in all, until stopped."""

    def __init__(self, base_url: str, keys: dict[str, str], rate: float, threads: int) -> None:
        self._base_url = base_url
        self._keys = keys
        self._interval = threads / rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.results: list[tuple[Kind, Outcome]] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]
        self._counter = itertools.count()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        weights = [kind.weight for kind in KINDS]
        with httpx2.Client(base_url=self._base_url, timeout=60) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                kind = rng.choices(KINDS, weights)[0]
                outcome = kind.call(client, self._keys, next(self._counter))
                with self._lock:
                    self.results.append((kind, outcome))
                next_at += self._interval  # pace the load: a steady rate, not a flood
                self._stop.wait(max(0.0, next_at - time.monotonic()))


def proxy_rss(proxy: GunicornProxy) -> int:
    assert proxy.process is not None
    return sum(rss_bytes(pid) for pid in [proxy.process.pid, *proxy.worker_pids()])


def drained(proxy: GunicornProxy, probes: int = 20) -> tuple[int, int]:
    """The largest queue depth and spool file count seen over ``probes`` readiness calls
    (each answered by whichever worker takes it)."""
    depth = spooled = 0
    for _ in range(probes):
        body = httpx2.get(proxy.base_url + "/readyz", timeout=10).json()
        depth, spooled = max(depth, body["record_queue_depth"]), max(spooled, body["spool_files"])
    return depth, spooled


def mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def run(minutes: float, rate: float, threads: int, workers: int) -> bool:
    seconds = minutes * 60
    db_url = create_pg_database()
    upgrade(db_url)
    engine = make_engine(db_url)
    redis_server = RedisServer().start()
    simulator = SimulatorThread(SimulatorConfig(latency_ms=20, token_delay_ms=2)).start()
    with TemporaryDirectory(prefix="metergate-soak-") as tmp:
        env = proxy_env(
            METERGATE_DATABASE_URL=db_url,
            METERGATE_REDIS_URL=redis_server.url,
            METERGATE_DATA_DIR=tmp,
            OPENAI_API_KEY="sk-soak-openai-0123456789abcdef",
            OPENAI_BASE_URL=simulator.base_url + "/v1",
            ANTHROPIC_API_KEY="sk-ant-soak-0123456789abcdef",
            ANTHROPIC_BASE_URL=simulator.base_url,
            METERGATE_RETRY_MAX_ATTEMPTS="1",
            METERGATE_BREAKER_FAILURE_THRESHOLD="1000000",
        )
        proxy = GunicornProxy(env, Path(tmp) / "gunicorn.log", workers=workers)
        try:
            proxy.start()
            keys = {
                "main": seed_accounts(
                    engine,
                    limits=Limits(monthly_usd=Decimal(10_000), cache_ttl_seconds=3600),
                ).key,
                "spent": seed_accounts(engine, limits=Limits(monthly_tokens=1)).key,
                "limited": seed_accounts(engine, limits=Limits(rpm=30)).key,
                "bad": "mg-" + "0" * 43,
            }
            load = Load(proxy.base_url, keys, rate, threads)
            started = time.monotonic()
            load.start()
            time.sleep(seconds * WARM_UP_SHARE)
            rss_start = proxy_rss(proxy)
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
            rss_end = proxy_rss(proxy)
            load.stop()
            elapsed = time.monotonic() - started
            depth, spooled = wait_for(lambda: (d := drained(proxy)) == (0, 0) and d, timeout=60)
            ids = [outcome.request_id for _, outcome in load.results]
            counts = record_counts(engine, ids)
            log_tail = proxy.log_tail(2000)
        finally:
            proxy.stop()
            simulator.stop()
            redis_server.stop()
            engine.dispose()
            drop_pg_database(db_url)
    return report(load.results, elapsed, rss_start, rss_end, (depth, spooled), ids, counts, {
        "workers": workers, "threads": threads, "rate": rate, "log_tail": log_tail,
    })  # fmt: skip


def report(
    results: list[tuple[Kind, Outcome]],
    elapsed: float,
    rss_start: int,
    rss_end: int,
    queue: tuple[int, int],
    ids: list[str],
    counts: dict[str, int],
    setup: dict[str, object],
) -> bool:
    by_kind: dict[str, Counter[int]] = {kind.name: Counter() for kind in KINDS}
    unexpected = []
    for kind, outcome in results:
        by_kind[kind.name][outcome.status] += 1
        if outcome.status not in kind.expected:
            unexpected.append((kind.name, outcome.status, outcome.error or outcome.text[:200]))
    hits = sum(1 for _, o in results if o.headers.get("x-metergate-cache") == "hit")
    latencies = sorted(o.seconds * 1000 for kind, o in results if kind.expected == {200})
    growth = (rss_end - rss_start) / rss_start
    missing = len(ids) - len(counts)
    duplicated = sum(1 for count in counts.values() if count > 1)
    checks = {
        "no unexpected answer": not unexpected,
        f"RSS growth under {RSS_GROWTH_LIMIT:.0%}": growth < RSS_GROWTH_LIMIT,
        "record writers drained": queue == (0, 0),
        "every request id recorded exactly once": missing == 0 and duplicated == 0,
    }
    print(
        f"soak: {elapsed / 60:.1f} min, {setup['workers']} gunicorn workers (gthread), "
        f"{setup['threads']} client threads at {setup['rate']}/s target; "
        f"{len(results)} calls ({len(results) / elapsed:.1f}/s)"
    )
    for name, statuses in by_kind.items():
        shown = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
        print(f"  {name:<20} {shown}")
    print(f"  cache hits: {hits}")
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 100 else [0.0] * 99
    print(
        f"latency of answered calls (ms): p50 {quantiles[49]:.0f}, p95 {quantiles[94]:.0f}, "
        f"p99 {quantiles[98]:.0f}"
    )
    print(f"unexpected answers: {len(unexpected)}")
    for item in unexpected[:10]:
        print(f"  {item}")
    print(
        f"proxy RSS (master + workers): after warm-up {mib(rss_start)}, at the end "
        f"{mib(rss_end)} ({growth:+.1%})"
    )
    print(f"record writers after the traffic: queue depth {queue[0]}, spool files {queue[1]}")
    print(
        f"records: {len(ids)} request ids sent, {len(counts)} in the database, "
        f"{missing} missing, {duplicated} duplicated"
    )
    for name, is_ok in checks.items():
        print(f"  [{'ok' if is_ok else 'FAIL'}] {name}")
    if not all(checks.values()):
        print(setup["log_tail"])
    return all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second, in all")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    options = parser.parse_args()
    is_ok = run(options.minutes, options.rate, options.threads, options.workers)
    sys.exit(0 if is_ok else 1)


if __name__ == "__main__":
    main()
