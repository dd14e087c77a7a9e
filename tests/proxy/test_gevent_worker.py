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


def ticks_during_query(pg_url: str, mode: str) -> int:
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout.strip())


def test_other_calls_run_while_a_gevent_worker_waits_for_postgresql(pg_url: str) -> None:
    # Left as psycopg chose before gevent patched select, its wait holds the whole worker.
    assert ticks_during_query(pg_url, "as imported") == 0
    # 50 ticks would fit in the half second; a loaded machine gets fewer, never none.
    assert ticks_during_query(pg_url, "cooperative") >= 10
