"""gevent workers: a query waits the way gevent can switch on (``make_psycopg_cooperative``)."""

from __future__ import annotations

import subprocess
import sys

# As a gunicorn gevent worker meets it: psycopg imported first (the master migrates before
# forking), gevent's patches after, then what ``ProxyApplication.load`` runs in the worker.
# While one greenlet waits for a half-second query, another one ticks every 10 ms.
SCRIPT = """
import sys, time
import psycopg
from gevent import monkey
monkey.patch_all()
import gevent
from proxy.server import make_psycopg_cooperative

if sys.argv[2] == "cooperative":
    make_psycopg_cooperative()
ticks = []

def tick():
    while True:
        gevent.sleep(0.01)
        ticks.append(time.monotonic())

with psycopg.connect(sys.argv[1]) as conn:
    ticker = gevent.spawn(tick)
    gevent.sleep(0)
    started = time.monotonic()
    conn.execute("SELECT pg_sleep(0.5)")
    ended = time.monotonic()
    ticker.kill()
print(sum(started < at < ended for at in ticks))
"""


def run_python(script: str, *args: str, timeout: float = 60) -> str:
    """What ``script`` prints, run in a fresh interpreter with ``args``."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return done.stdout


def ticks_during_query(pg_url: str, mode: str) -> int:
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    return int(run_python(SCRIPT, url, mode).strip())


def test_other_calls_run_while_a_gevent_worker_waits_for_postgresql(pg_url: str) -> None:
    # Left as psycopg chose before gevent patched select, its wait holds the whole worker.
    assert ticks_during_query(pg_url, "as imported") == 0
    # 50 ticks would fit in the half second; a loaded machine gets fewer, never none.
    assert ticks_during_query(pg_url, "cooperative") >= 10


# A worker's first call to each provider builds the SDK's headers (``LazySdk``), which
# name the platform; spawned processes are listed on stdout.
FIRST_CALLS = """
import subprocess, sys
from proxy.providers.sdk import LazySdk
from proxy.server import warm_platform_cache

if sys.argv[1] == "warmed":
    warm_platform_cache()  # as the master does before it forks the workers
started = subprocess.Popen.__init__

def spy(self, args, *rest, **options):
    print(args)
    started(self, args, *rest, **options)

subprocess.Popen.__init__ = spy
for module, client_class, base_url in (
    ("openai", "OpenAI", "http://127.0.0.1:9/v1"),
    ("anthropic", "Anthropic", "http://127.0.0.1:9"),
):
    LazySdk(module, client_class, api_key="sk-test", base_url=base_url, timeout=5.0).sender()
"""


def spawned_by_first_calls(mode: str) -> list[str]:
    return run_python(FIRST_CALLS, mode, timeout=120).splitlines()


def test_a_workers_first_call_to_a_provider_forks_no_process() -> None:
    # The SDKs' platform headers run `uname -p` the first time (a fork, which in a gevent
    # worker runs Python in the child); the master asks once, and every worker inherits it.
    assert any("uname" in line for line in spawned_by_first_calls("cold"))
    assert spawned_by_first_calls("warmed") == []


# As a gunicorn gevent worker meets it: redis-py imported first (by the master), gevent's
# patches after, then the app's Redis client made in the worker.
REDIS_POOL = """
import sys
import redis
from gevent import monkey
monkey.patch_all()
import gevent.queue
from proxy.app import _redis_for

client = _redis_for(sys.argv[1])
assert client.ping() and client.ping()
pool = client.connection_pool
print(type(pool.pool) is gevent.queue.LifoQueue, sum(1 for c in pool.pool.queue if c))
"""


def test_in_a_gevent_worker_redis_connections_wait_in_gevents_queue(redis_url: str) -> None:
    # redis-py's default queue class is the one it imported before gevent patched it:
    # each get and put of a connection would take a trip round gevent's hub.
    # gevent's queue, and the one connection reused:
    assert run_python(REDIS_POOL, redis_url).split() == ["True", "1"]
