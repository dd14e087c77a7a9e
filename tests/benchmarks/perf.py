"""Gateway overhead: metergate with everything on, against a bare floor and the upstream.

    .venv/bin/python -m tests.benchmarks.perf [--quick] [--litellm] [--repeat N]
                                              [--realistic] [--seconds S]
    make bench

Brings up, each as its own processes:

- the simulator (what ``metergate simulator`` runs, no latency, with the rate limits it
  reports raised out of the way), measured directly ("direct");
- a bare floor (``tests/benchmarks/floor_app.py``: Flask forwarding with a pooled httpx
  client) under gunicorn, twice: gthread workers ("floor") and gevent ("floor-gevent");
  each target is taken against the better of the two at that point;
- metergate in its production shape ("metergate"): ``metergate serve proxy --workers 2``
  (gunicorn, gevent workers as shipped; ``--worker-class gthread`` for gthread) on a
  fresh PostgreSQL database of its own (created, migrated, dropped) and a
  Redis database of its own (``REDIS_DB``, emptied before and after), with a key whose
  tier has every feature on: auth, requests- and tokens-per-minute limits, monthly
  token and USD quotas reserved per call, a tenant cap and a global cap, the response
  cache, screening (the default rules), and every call recorded in SQL;
- with ``--litellm``: LiteLLM's proxy (``.bench/litellm-venv``, made on first use with
  ``pip install 'litellm[proxy]'``), two workers, a master key, no database, against the
  same simulator.

Load comes from wrk (Debian's ``wrk``) with ``tests/benchmarks/chat.lua``, which checks
every answer's status and body and counts the bad ones. For each target and concurrency
(1, 8, 64) it reports requests/s, p50 / p90 / p99 latency, added latency over direct,
server CPU ms per request (utime + stime of the server's processes from /proc, delta
over the run, divided by the requests answered) and RSS per worker; then cache hits
(the same question again), streaming (CPU per streamed chunk; time to first token from
a sequential Python client) for each target, and the issue's targets, met or missed.
Every point runs ``--repeat`` times (3): the median is printed, with the spread
(min-max) in brackets.

``--realistic``: the simulator answers in about 1 s, streaming its tokens over that
second; 500 concurrent clients stream for ``--realistic-seconds`` directly, through the
floor and through metergate, each with gunicorn's gthread workers (256 threads each)
and with gevent workers; it reports sustained throughput against the ideal 500/s,
added latency percentiles, CPU per stream, and RSS per worker before the run, every sixth
of it and at its end (whether memory levels off under the load); for metergate also the
record queue's depth (``/readyz``) every sixth of the run (whether its writer keeps up).

Results are also written to ``.bench/perf-<time>.json``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis

from shared import accounts
from shared.accounts import Limits
from shared.db import make_engine, transaction, upgrade
from tests.support import create_pg_database, drop_pg_database

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BENCH_DIR = REPO / ".bench"
LITELLM_VENV = BENCH_DIR / "litellm-venv"
LUA = Path(__file__).with_name("chat.lua")
RESPONSES_CONCURRENCIES = (1, 8)
REDIS_DB = 15  # the tests use 9-14
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
MODEL = "gpt-4o-mini"
CONCURRENCIES = (1, 8, 64)
WORKERS = 2
THREADS = 32  # gthread threads per worker, as ``metergate serve proxy`` defaults
FLOORS = ("floor", "floor-gevent")  # the bare forwarder on gthread and on gevent workers
GEVENT_FLOOR = FLOORS[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TTFT_CALLS = 60
REALISTIC_CLIENTS = 500
REALISTIC_THREADS = 256
RSS_SAMPLES = 6  # RSS per worker is read this many times over a realistic run, and at its end
STREAM_TOKEN_DELAY_MS = 2.0


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def service_pids() -> list[int]:
    """The processes of PostgreSQL and Redis on this machine (by command name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(("postgres", "redis-server")):
                found.append(int(entry.name))
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Server:
    """One target: its process tree, where to send calls, the key to send."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    key: str = "-"
    health_path: str = "/healthz"
    log: Path | None = None
    log_start: int = 0  # where this run's lines begin in ``log`` (it is appended to)

    def log_text(self) -> str:
        assert self.log is not None
        with self.log.open("rb") as lines:
            lines.seek(self.log_start)
            return lines.read().decode(errors="replace")

    def pids(self) -> list[int]:
        return descendants(self.process.pid)

    def worker_pids(self) -> list[int]:
        """The processes that serve (gunicorn's and uvicorn's workers; else the process)."""
        pids = self.pids()
        return pids[1:] if len(pids) > 1 else pids

    def rss_per_worker(self) -> float:
        return max(rss_mib(pid) for pid in self.worker_pids())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    os.kill(pid, signal.SIGKILL)
                self.process.wait(10)


def start(
    name: str,
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    port: int,
    *,
    health_path: str = "/healthz",
    ready: Callable[[Server], bool] | None = None,
    timeout: float = 180.0,
) -> Server:
    log = (log_dir / f"{name}.log").open("ab")
    log_start = log.tell()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, process, f"http://127.0.0.1:{port}", health_path=health_path)
    server.log, server.log_start = log_dir / f"{name}.log", log_start
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited early:\n{tail}")
        try:
            answered = httpx.get(server.base_url + health_path, timeout=2).status_code == 200
        except httpx.HTTPError:
            answered = False
        if answered and (ready is None or ready(server)):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not come up within {timeout:.0f}s")
        time.sleep(0.2)


def base_env(**values: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("METERGATE_", "OPENAI_", "ANTHROPIC_", "LITELLM_"))
    }
    env.update(values)
    return env


def has_workers(count: int) -> Callable[[Server], bool]:
    return lambda server: len(server.pids()) >= count + 1


# ``metergate simulator``, with the rate limits it reports (in x-ratelimit-* headers, never
# enforced) raised: at thousands of calls a second its default 10,000 a minute would make
# the gateway hold calls for the provider's window to reset, as it should before a real one.
SIMULATOR = (
    "import sys; from proxy.simulator import SimulatorConfig, run; "
    "run('127.0.0.1', int(sys.argv[1]), "
    "SimulatorConfig(requests_per_minute=10**9, tokens_per_minute=10**12))"
)


def start_simulator(log_dir: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-c", SIMULATOR, str(port)]
    return start("direct", command, base_env(), log_dir, port, health_path="/_sim/health")


def set_simulator(simulator: Server, **values: float) -> None:
    httpx.post(simulator.base_url + "/_sim/config", json=values).raise_for_status()


def start_floor(
    log_dir: Path, upstream: str, worker_class: str, threads: int, name: str = "floor"
) -> Server:
    port = free_port()
    command = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)]
    command += ["--worker-class", worker_class, "--threads", str(threads), "--keep-alive", "5"]
    if worker_class == "gevent":
        command += ["--worker-connections", "2000"]
    command += ["tests.benchmarks.floor_app:create_app()"]
    env = base_env(FLOOR_UPSTREAM=upstream)
    return start(name, command, env, log_dir, port, ready=has_workers(WORKERS))


@dataclass
class Deployment:
    """metergate's database, Redis and key: made once, used by every proxy started."""

    db_url: str
    data_dir: Path
    key: str = ""

    def env(self, upstream: str) -> dict[str, str]:
        return base_env(
            METERGATE_DATABASE_URL=self.db_url,
            METERGATE_REDIS_URL=REDIS_URL,
            METERGATE_DATA_DIR=str(self.data_dir),
            OPENAI_API_KEY="sk-bench-openai-0123456789abcdef",
            OPENAI_BASE_URL=upstream + "/v1",
            ANTHROPIC_API_KEY="sk-ant-bench-0123456789abcdef",
            ANTHROPIC_BASE_URL=upstream,
        )


@contextmanager
def deployment(tmp: Path) -> Iterator[Deployment]:
    db_url = create_pg_database()
    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    try:
        upgrade(db_url)
        engine = make_engine(db_url)
        with transaction(engine) as session:
            accounts.create_tenant(session, "bench", monthly_usd=Decimal(1_000_000))
            accounts.set_global_monthly_usd(session, Decimal(10_000_000))
            accounts.create_tier(
                session,
                "bench",
                Limits(
                    rpm=10_000_000,
                    tpm=2_000_000_000,
                    monthly_tokens=100_000_000_000,
                    monthly_usd=Decimal(1_000_000),
                    cache_ttl_seconds=3600,
                ),
            )
            accounts.create_user(session, "bench@example.com", "bench", "bench")
            _, key = accounts.create_key(session, "bench@example.com", name="bench")
        engine.dispose()
        yield Deployment(db_url, tmp / "metergate-data", key)
    finally:
        store.flushdb()
        store.close()
        drop_pg_database(db_url)


def start_metergate(
    log_dir: Path, dep: Deployment, upstream: str, worker_class: str, threads: int
) -> Server:
    port = free_port()
    command = [str(BIN / "metergate"), "serve", "proxy", "--port", str(port)]
    command += ["--workers", str(WORKERS), "--worker-class", worker_class]
    command += ["--threads", str(threads)]
    server = start(
        "metergate", command, dep.env(upstream), log_dir, port, ready=has_workers(WORKERS)
    )
    server.key = dep.key
    return server


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print("installing litellm[proxy] into .bench/litellm-venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"]
        subprocess.run(pip, check=True)
    return binary


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


def start_litellm(log_dir: Path, upstream: str) -> Server:
    binary = ensure_litellm()
    config = log_dir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-bench-openai-0123456789abcdef\n"
    )
    port = free_port()
    command = [str(binary), "--config", str(config), "--port", str(port)]
    command += ["--num_workers", str(WORKERS)]
    # Its own key check on (a master key; there is no database for virtual keys).
    master_key = "sk-bench-litellm-" + uuid.uuid4().hex
    env = base_env(
        LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MASTER_KEY=master_key
    )
    server = start(
        "litellm",
        command,
        env,
        log_dir,
        port,
        health_path="/health/liveliness",
        ready=has_workers(WORKERS),
        timeout=300,
    )
    server.key = master_key
    return server


# -- load ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One wrk run against one server."""

    requests: int
    seconds: float
    good: int
    bad: int
    errors: int
    chunks: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    cpu_seconds: float
    # PostgreSQL's and Redis's processes (the machine's, whoever uses them), per call:
    # metergate's records and scripts run there, on the same 2 cores.
    services_cpu_ms_per_request: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    server: Server,
    concurrency: int,
    seconds: float,
    *,
    mode: str = "unique",
    stream: bool = False,
    timeout_seconds: int = 10,
    api: str = "chat",
) -> Run:
    threads = min(concurrency, 2)
    command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s"]
    command += ["--timeout", f"{timeout_seconds}s", "-s", str(LUA)]
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    command += [server.base_url + path, "--", mode, "1" if stream else "0"]
    command += [server.key, MODEL, uuid.uuid4().hex[:12], api]
    pids = server.pids()
    services = service_pids()
    before, services_before = cpu_seconds(pids), cpu_seconds(services)
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    used = cpu_seconds(pids) - before
    services_used = cpu_seconds(services) - services_before
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    data = json.loads(line[len("RESULT ") :])
    errors = sum(data[name] for name in ("connect", "read", "write", "status", "timeout"))
    requests = int(data["requests"])
    return Run(
        requests=requests,
        seconds=data["duration_us"] / 1e6,
        good=int(data["good"]),
        bad=int(data["bad"]),
        errors=errors,
        chunks=int(data["chunks"]),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_ms_per_request=used * 1000 / requests if requests else float("nan"),
        cpu_seconds=used,
        services_cpu_ms_per_request=services_used * 1000 / requests if requests else 0.0,
    )


def time_to_first_token(server: Server, calls: int) -> list[float]:
    """Seconds to the first content chunk of ``calls`` sequential streamed calls."""
    headers = {"Authorization": f"Bearer {server.key}"} if server.key != "-" else {}
    found: list[float] = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for n in range(calls + 5):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"ttft {uuid.uuid4().hex} {n}"}],
                "stream": True,
            }
            started = time.perf_counter()
            first: float | None = None
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter() - started
                if first is None:
                    raise RuntimeError(f"{server.name}: a stream without content")
            if n >= 5:  # the first few warm connections and caches up
                found.append(first)
    return found


def raw_time_to_first_token(server: Server, calls: int) -> list[float]:
    """The same, from a bare socket: a new connection per call, the request in one write
    with TCP_NODELAY; no HTTP client library between the clock and the bytes."""
    host, port = server.base_url.removeprefix("http://").split(":")
    found: list[float] = []
    for n in range(calls + 5):
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"ttft {uuid.uuid4().hex} {n}"}],
                "stream": True,
            }
        ).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Authorization: Bearer {server.key}\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            sock.sendall(head.encode() + body)
            received, first = b"", None
            while chunk := sock.recv(65536):
                received += chunk
                if first is None and b'"content"' in received:
                    first = time.perf_counter() - started
            if first is None or b"[DONE]" not in received:
                raise RuntimeError(f"{server.name}: a stream without content")
        if n >= 5:
            found.append(first)
    return found


# -- measuring and reporting ---------------------------------------------------------------


@dataclass
class Point:
    """Repeated runs of one scenario on one server."""

    runs: list[Run] = field(default_factory=list)

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(run) for run in self.runs)

    def spread(self, value: Callable[[Run], float]) -> tuple[float, float]:
        values = [value(run) for run in self.runs]
        return min(values), max(values)

    def bad(self) -> int:
        return sum(run.bad + run.errors for run in self.runs)


def fmt(point: Point, value: Callable[[Run], float], digits: int = 2) -> str:
    low, high = point.spread(value)
    text = f"{point.median(value):.{digits}f}"
    if len(point.runs) > 1:
        text += f" [{low:.{digits}f}-{high:.{digits}f}]"
    return text


class Results:
    def __init__(self) -> None:
        self.points: dict[tuple[str, str, int], Point] = {}
        self.extra: dict[str, Any] = {}

    def add(self, server: str, scenario: str, concurrency: int, run: Run) -> None:
        self.points.setdefault((server, scenario, concurrency), Point()).runs.append(run)

    def get(self, server: str, scenario: str, concurrency: int) -> Point | None:
        return self.points.get((server, scenario, concurrency))

    def to_json(self) -> dict[str, Any]:
        return {
            "points": [
                {"server": s, "scenario": sc, "concurrency": c, "runs": [vars(r) for r in p.runs]}
                for (s, sc, c), p in self.points.items()
            ],
            **self.extra,
        }


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def warm_every_worker(server: Server) -> None:
    """Call metergate until each of its workers has made its upstream sender for openai
    (it does at its first call to the provider, and logs ``event=upstream_sender_ready``;
    without the headers shown by the master, that first call imports the SDK: 0.5-2 s).
    A gevent worker can take every connection of a warm-up, leaving the other worker's
    first call to the middle of a measured run."""
    for _ in range(30):
        ready = server.log_text().count("event=upstream_sender_ready sdk=openai")
        if ready >= WORKERS:
            return
        wrk(server, 8, 1)  # new connections, which any worker may accept
    raise RuntimeError(f"{server.name}: only {ready} of {WORKERS} workers answered a call")


def measure(
    servers: list[Server], results: Results, seconds: float, repeat: int, rss: dict[str, float]
) -> None:
    names = [server.name for server in servers]
    print(f"warming up {', '.join(names)} ...", flush=True)
    for server in servers:
        for stream in (False, True):
            run = wrk(server, 8, min(seconds, 3), stream=stream)
            if run.bad or run.errors or not run.good:
                raise RuntimeError(f"{server.name}: {run.bad} bad answers in the warm-up")
        if server.name == "metergate":
            warm_every_worker(server)
    for round_number in range(repeat):
        print(f"round {round_number + 1}/{repeat}  (load average {load_average()})", flush=True)
        for concurrency in CONCURRENCIES:
            for server in servers:
                results.add(server.name, "chat", concurrency, wrk(server, concurrency, seconds))
        # Chunks a few milliseconds apart, as a model sends them: each is read and
        # written on its own (at no delay they would arrive coalesced, a few per read).
        set_simulator(servers[0], token_delay_ms=STREAM_TOKEN_DELAY_MS)
        for server in servers:
            results.add(server.name, "stream", 8, wrk(server, 8, seconds, stream=True))
        set_simulator(servers[0], token_delay_ms=0.0)
        # The Responses API against chat completions: the same pipeline, another dialect.
        for concurrency in RESPONSES_CONCURRENCIES:
            for server in servers:
                if server.name in ("direct", "metergate"):
                    run = wrk(server, concurrency, seconds, api="responses")
                    results.add(server.name, "responses", concurrency, run)
        metergate = next((s for s in servers if s.name == "metergate"), None)
        if metergate is not None:
            for concurrency in (1, 8):
                run = wrk(metergate, concurrency, seconds, mode="same")
                results.add("metergate", "cache hit", concurrency, run)
    for server in servers:
        rss[server.name] = server.rss_per_worker()
    print("time to first token ...", flush=True)
    for server in servers:
        results.extra.setdefault("ttft_ms", {})[server.name] = [
            t * 1000 for t in time_to_first_token(server, TTFT_CALLS)
        ]
        results.extra.setdefault("raw_ttft_ms", {})[server.name] = [
            t * 1000 for t in raw_time_to_first_token(server, TTFT_CALLS)
        ]


def report(results: Results, names: list[str], rss: dict[str, float]) -> None:
    print()
    print("Non-streamed chat completions (median [min-max] over the rounds)")
    header = f"{'target':<12} {'c':>3} {'req/s':>22} {'p50 ms':>20} {'p90 ms':>20}"
    header += f" {'p99 ms':>20} {'added p50':>9} {'added p99':>9} {'CPU ms/req':>20}"
    header += f" {'+PG/Redis':>9} {'bad':>4}"
    print(header)
    for concurrency in CONCURRENCIES:
        direct = results.get("direct", "chat", concurrency)
        for name in names:
            point = results.get(name, "chat", concurrency)
            if point is None:
                continue
            added50 = added99 = "-"
            if direct is not None and name != "direct":
                added50 = (
                    f"{point.median(lambda r: r.p50_ms) - direct.median(lambda r: r.p50_ms):.2f}"
                )
                added99 = (
                    f"{point.median(lambda r: r.p99_ms) - direct.median(lambda r: r.p99_ms):.2f}"
                )
            print(
                f"{name:<12} {concurrency:>3} {fmt(point, lambda r: r.rps, 0):>22}"
                f" {fmt(point, lambda r: r.p50_ms):>20} {fmt(point, lambda r: r.p90_ms):>20}"
                f" {fmt(point, lambda r: r.p99_ms):>20} {added50:>9} {added99:>9}"
                f" {fmt(point, lambda r: r.cpu_ms_per_request):>20}"
                f" {point.median(lambda r: r.services_cpu_ms_per_request):>9.2f} {point.bad():>4}"
            )
    print(
        "(+PG/Redis: CPU per call of the machine's PostgreSQL and Redis processes during the"
        " run, beside the server's own)"
    )
    print()
    print("RSS per worker (MiB, after the runs): " + ", ".join(f"{n} {rss[n]:.0f}" for n in names))
    print()
    print("Cache hits (metergate, the same question; CPU vs the misses above)")
    for concurrency in (1, 8):
        hit = results.get("metergate", "cache hit", concurrency)
        miss = results.get("metergate", "chat", concurrency)
        direct = results.get("direct", "chat", concurrency)
        if hit is None or miss is None or direct is None:
            continue
        added = hit.median(lambda r: r.p50_ms) - direct.median(lambda r: r.p50_ms)
        print(
            f"  c={concurrency}: {fmt(hit, lambda r: r.rps, 0)} req/s,"
            f" p50 {fmt(hit, lambda r: r.p50_ms)}"
            f" ms (vs direct {added:+.2f}), p99 {fmt(hit, lambda r: r.p99_ms)} ms,"
            f" CPU {fmt(hit, lambda r: r.cpu_ms_per_request)} ms/req"
            f" (miss {fmt(miss, lambda r: r.cpu_ms_per_request)}), bad {hit.bad()}"
        )
    print()
    print(
        f"Streaming (c=8, chunks {STREAM_TOKEN_DELAY_MS:g} ms apart; CPU per chunk ="
        " (CPU per streamed call - CPU per whole call at c=8) / chunks per call;"
        ")"
    )
    for name in names:
        point = results.get(name, "stream", 8)
        whole = results.get(name, "chat", 8)
        if point is None or whole is None:
            continue
        per_chunk = partial(cpu_per_chunk, whole=whole)
        chunks = point.median(lambda r: r.chunks / max(r.good, 1))
        line = (
            f"  {name:<12} {fmt(point, lambda r: r.rps, 0)} streams/s, {chunks:.0f} chunks each,"
            f" CPU {fmt(point, lambda r: r.cpu_ms_per_request)} ms/stream,"
            f" {fmt(point, per_chunk, 1)} us/chunk, bad {point.bad()}"
        )
        print(line)
    print("Time to first token, sequential calls (ms; overhead = p50 - direct's p50)")
    for label, key in (
        ("httpx, keep-alive", "ttft_ms"),
        ("bare socket, new connection", "raw_ttft_ms"),
    ):
        found = results.extra.get(key, {})
        direct_p50 = statistics.median(found["direct"]) if "direct" in found else None
        for name in names:
            if name not in found:
                continue
            values = sorted(found[name])
            p50 = statistics.median(values)
            p90 = values[int(len(values) * 0.9)]
            line = f"  {label:<28} {name:<12} p50 {p50:6.2f}  p90 {p90:6.2f}"
            if direct_p50 is not None and name != "direct":
                line += f"  overhead {p50 - direct_p50:+.2f}"
            print(line)
    report_responses(results)
    report_targets(results)


def cpu_per_chunk(run: Run, whole: Point) -> float:
    """Microseconds of CPU per streamed chunk: what a stream costs over a whole answer
    (at the same concurrency), spread over its chunks."""
    chunks_per_call = run.chunks / max(run.good, 1)
    extra = run.cpu_ms_per_request - whole.median(lambda r: r.cpu_ms_per_request)
    return extra * 1000 / chunks_per_call


def report_targets(results: Results) -> None:
    """The issue's targets, each against the better of the two floors at that point (the
    floor at its best), metergate as it ran."""

    def median(name: str, scenario: str, c: int, value: Callable[[Run], float]) -> float | None:
        point = results.get(name, scenario, c)
        return None if point is None else point.median(value)

    def best_floor(
        scenario: str, c: int, value: Callable[[Run], float], best: Callable[..., Any] = min
    ) -> tuple[float, str] | None:
        found = [(v, name) for name in FLOORS if (v := median(name, scenario, c, value))]
        return best(found) if found else None

    def cpu(r: Run) -> float:
        return r.cpu_ms_per_request

    def p50(r: Run) -> float:
        return r.p50_ms

    def p99(r: Run) -> float:
        return r.p99_ms

    def rps(r: Run) -> float:
        return r.rps

    rows: list[tuple[str, str, bool]] = []
    for c in (1, 64):
        mine, floor = median("metergate", "chat", c, cpu), best_floor("chat", c, cpu)
        if mine and floor:
            ratio = mine / floor[0]
            rows.append(
                (
                    f"CPU per call at c={c} <= 1.5 x the floor's",
                    f"{ratio:.2f} x ({mine:.2f} / {floor[0]:.2f} ms, {floor[1]})",
                    ratio <= 1.5,
                )
            )
        peer = median("litellm", "chat", c, cpu)
        if mine and peer:
            rows.append(
                (
                    f">= 8 x less CPU than LiteLLM at c={c}",
                    f"{peer / mine:.1f} x ({peer:.2f} / {mine:.2f} ms)",
                    peer / mine >= 8,
                )
            )
    direct50, direct99 = median("direct", "chat", 1, p50), median("direct", "chat", 1, p99)
    mine50, mine99 = median("metergate", "chat", 1, p50), median("metergate", "chat", 1, p99)
    if direct50 and direct99 and mine50 and mine99:
        added50, added99 = mine50 - direct50, mine99 - direct99
        rows.append(("added p50 at c=1 <= 1.5 ms", f"{added50:.2f} ms", added50 <= 1.5))
        rows.append(("added p99 at c=1 <= 4 ms", f"{added99:.2f} ms", added99 <= 4.0))
    mine_rps, floor_rps = median("metergate", "chat", 64, rps), best_floor("chat", 64, rps, max)
    if mine_rps and floor_rps:
        share = mine_rps / floor_rps[0]
        rows.append(
            (
                "throughput at c=64 >= 65 % of the floor's",
                f"{share:.0%} ({mine_rps:.0f} / {floor_rps[0]:.0f} req/s, {floor_rps[1]})",
                share >= 0.65,
            )
        )
    hit_cpu = median("metergate", "cache hit", 1, cpu)
    miss_cpu = median("metergate", "chat", 1, cpu)
    if hit_cpu and miss_cpu:
        rows.append(
            (
                "a cache hit costs less CPU than a miss",
                f"{hit_cpu:.2f} against {miss_cpu:.2f} ms (c=1)",
                hit_cpu < miss_cpu,
            )
        )
    hit50 = median("metergate", "cache hit", 1, p50)
    floor_added = [
        (v - direct50, name) for name in FLOORS if direct50 and (v := median(name, "chat", 1, p50))
    ]
    if hit50 and direct50 and floor_added:
        least = min(floor_added)
        rows.append(
            (
                "a cache hit adds no more latency than the floor",
                f"+{hit50 - direct50:.2f} ms against +{least[0]:.2f} ({least[1]}, c=1 p50)",
                hit50 - direct50 <= least[0],
            )
        )
    ttft = results.extra.get("ttft_ms", {})
    if "metergate" in ttft and "direct" in ttft:
        overhead = statistics.median(ttft["metergate"]) - statistics.median(ttft["direct"])
        rows.append(
            ("time-to-first-token overhead <= 1 ms p50", f"{overhead:+.2f} ms", overhead <= 1.0)
        )
    stream, whole = results.get("metergate", "stream", 8), results.get("metergate", "chat", 8)
    if stream and whole:
        chunk = stream.median(partial(cpu_per_chunk, whole=whole))
        rows.append(("<= 50 us of CPU per streamed chunk", f"{chunk:.1f} us", chunk <= 50))
    if not rows:
        return
    print()
    print("Targets (metergate as it ran; the floor at its best, the better of its two runs)")
    for target, measured, is_met in rows:
        print(f"  {'met   ' if is_met else 'MISSED'}  {target:<48} {measured}")


def report_responses(results: Results) -> None:
    """metergate's overhead on /v1/responses next to its overhead on chat completions
    (overhead: added p50 latency and added CPU per request, both over direct)."""
    print()
    print("/v1/responses vs /v1/chat/completions (metergate's overhead over direct)")
    for concurrency in RESPONSES_CONCURRENCIES:
        overheads = {}
        for api in ("chat", "responses"):
            mine = results.get("metergate", api, concurrency)
            direct = results.get("direct", api, concurrency)
            if mine is None or direct is None:
                return
            latency = mine.median(lambda r: r.p50_ms) - direct.median(lambda r: r.p50_ms)
            cpu = mine.median(lambda r: r.cpu_ms_per_request) - direct.median(
                lambda r: r.cpu_ms_per_request
            )
            overheads[api] = (latency, cpu, mine.bad())
        (chat_ms, chat_cpu, _), (resp_ms, resp_cpu, bad) = overheads["chat"], overheads["responses"]
        print(
            f"  c={concurrency}: added p50 {resp_ms:.2f} ms (chat {chat_ms:.2f},"
            f" {resp_ms / chat_ms - 1:+.0%}); added CPU {resp_cpu:.2f} ms/req"
            f" (chat {chat_cpu:.2f}, {resp_cpu / chat_cpu - 1:+.0%}); bad {bad}"
            "  (target: within 10%)"
        )


# -- realistic load -------------------------------------------------------------------------


def realistic(log_dir: Path, dep: Deployment, seconds: float, results: Results) -> None:
    """500 clients, each streaming an answer that takes about 1 s: direct, through the
    floor and through metergate, each with gthread (many threads) and gevent workers."""
    sim = start_simulator(log_dir)
    stack = ExitStack()
    stack.callback(sim.stop)
    with stack:
        # The benchmark's questions get 8-60 tokens: spread them over about a second.
        set_simulator(sim, token_delay_ms=28.0)
        probe = wrk(sim, 1, 3, stream=True)
        print(f"direct: one stream takes {probe.p50_ms:.0f} ms p50 ({probe.p99_ms:.0f} p99)")
        threads = REALISTIC_THREADS
        shapes: list[tuple[str, Callable[[], Server]]] = [
            (
                f"floor gthread x{threads}",
                lambda: start_floor(log_dir, sim.base_url, "gthread", threads),
            ),
            ("floor gevent", lambda: start_floor(log_dir, sim.base_url, "gevent", 1)),
            (
                f"metergate gthread x{threads}",
                lambda: start_metergate(log_dir, dep, sim.base_url, "gthread", threads),
            ),
            ("metergate gevent", lambda: start_metergate(log_dir, dep, sim.base_url, "gevent", 1)),
        ]
        direct = wrk(sim, REALISTIC_CLIENTS, seconds, stream=True, timeout_seconds=30)
        results.add("direct", "realistic", REALISTIC_CLIENTS, direct)
        print(_realistic_line("direct", direct, None, None))
        for label, starter in shapes:
            server = starter()
            try:
                wrk(server, 50, 3, stream=True, timeout_seconds=30)  # warm-up
                if server.name == "metergate":
                    warm_every_worker(server)
                interval = seconds / RSS_SAMPLES
                with (
                    sampled_rss(server, interval) as rss,
                    sampled_queue(server, interval) as depths,
                ):
                    run = wrk(server, REALISTIC_CLIENTS, seconds, stream=True, timeout_seconds=30)
            finally:
                server.stop()
            results.add(label, "realistic", REALISTIC_CLIENTS, run)
            results.extra.setdefault("realistic_rss", {})[label] = rss
            print(_realistic_line(label, run, direct, rss))
            if depths:
                results.extra.setdefault("realistic_record_queue", {})[label] = depths
                print(f"    record queue depth (a worker's, every {interval:.0f} s): {depths}")


@contextmanager
def sampling(read: Callable[[], Any], interval: float, first: list[Any]) -> Iterator[list[Any]]:
    """``first``, then ``read()`` every ``interval`` seconds while the block runs (a read
    that fails over HTTP is left out: a busy moment)."""
    samples = list(first)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            try:
                samples.append(read())
            except (httpx.HTTPError, ValueError):
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


@contextmanager
def sampled_rss(server: Server, interval: float) -> Iterator[list[float]]:
    """RSS per worker (the largest worker's, MiB) now, every ``interval`` seconds while
    the block runs, and at its end: whether memory levels off under the load or keeps
    growing."""
    with sampling(server.rss_per_worker, interval, [server.rss_per_worker()]) as samples:
        yield samples
    samples.append(server.rss_per_worker())


@contextmanager
def sampled_queue(server: Server, interval: float) -> Iterator[list[int]]:
    """metergate's record queue depth (``/readyz``: the worker that answers), every
    ``interval`` seconds while the block runs: whether the record writer keeps up."""
    if server.name != "metergate":
        yield []
        return

    def depth() -> int:
        ready = httpx.get(server.base_url + "/readyz", timeout=10).json()
        return int(ready["record_queue_depth"])

    with sampling(depth, interval, []) as depths:
        yield depths


def _realistic_line(name: str, run: Run, direct: Run | None, rss: list[float] | None) -> str:
    line = (
        f"  {name:<26} {run.rps:6.0f} req/s ({run.rps / REALISTIC_CLIENTS:.0%} of ideal),"
        f" p50 {run.p50_ms:.0f} p90 {run.p90_ms:.0f} p99 {run.p99_ms:.0f} ms"
    )
    if direct is not None:
        line += (
            f", added p50 {run.p50_ms - direct.p50_ms:+.1f} p90 {run.p90_ms - direct.p90_ms:+.1f}"
            f" p99 {run.p99_ms - direct.p99_ms:+.1f} ms"
        )
    if rss:
        line += f", RSS/worker {' -> '.join(f'{mib:.0f}' for mib in rss)} MiB"
    line += f", CPU {run.cpu_ms_per_request:.2f} ms/stream, bad {run.bad + run.errors}"
    return line


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one round of 3 s runs")
    parser.add_argument("--litellm", action="store_true", help="measure LiteLLM too")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per point (3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per run (8)")
    parser.add_argument("--realistic", action="store_true", help="the 500-client scenario")
    parser.add_argument("--realistic-seconds", type=float, default=30.0)
    parser.add_argument("--skip-main", action="store_true", help="only --realistic")
    parser.add_argument(
        "--worker-class",
        default="gevent",
        choices=["gthread", "gevent"],
        help="metergate's workers (gevent, as `metergate serve proxy` runs them); the floor"
        " runs on both",
    )
    args = parser.parse_args(argv)
    repeat, seconds = (1, 3.0) if args.quick else (args.repeat, args.seconds)
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        print("wrk is missing: apt-get install -y wrk (or make bench)", file=sys.stderr)
        return 2
    BENCH_DIR.mkdir(exist_ok=True)
    results = Results()
    results.extra.update(
        {
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "load_average_start": load_average(),
        }
    )
    print(f"{_cpu_model()}, {os.cpu_count()} CPUs; load average {load_average()}")
    log_dir = BENCH_DIR / f"logs-{time.strftime('%Y%m%dT%H%M%S')}"
    log_dir.mkdir(parents=True)
    print(f"server logs: {log_dir.relative_to(REPO)}")
    with ExitStack() as stack:
        dep = stack.enter_context(deployment(log_dir))
        if not args.skip_main:
            sim = start_simulator(log_dir)
            stack.callback(sim.stop)
            servers = [sim]
            # The floor at its best: on gthread it serves more at c=64, on gevent it can
            # cost less at c=1; each target is taken against the better of the two.
            floors = [
                start_floor(log_dir, sim.base_url, "gthread", THREADS),
                start_floor(log_dir, sim.base_url, "gevent", 1, name=GEVENT_FLOOR),
            ]
            for floor in floors:
                stack.callback(floor.stop)
                servers.append(floor)
            threads = THREADS if args.worker_class == "gthread" else 1
            mg = start_metergate(log_dir, dep, sim.base_url, args.worker_class, threads)
            stack.callback(mg.stop)
            servers.append(mg)
            if args.litellm:
                peer = start_litellm(log_dir, sim.base_url)
                stack.callback(peer.stop)
                servers.append(peer)
                results.extra["litellm_version"] = litellm_version()
                print(f"LiteLLM {results.extra['litellm_version']}")
            rss: dict[str, float] = {}
            measure(servers, results, seconds, repeat, rss)
            results.extra["rss_per_worker_mib"] = rss
            names = [server.name for server in servers]
            report(results, names, rss)
            for server in (mg, *floors):
                server.stop()
        if args.realistic:
            print()
            print(
                f"Realistic load: {REALISTIC_CLIENTS} clients streaming ~1 s answers,"
                f" {args.realistic_seconds:g} s (load average {load_average()})"
            )
            realistic(log_dir, dep, args.realistic_seconds, results)
    results.extra["load_average_end"] = load_average()
    print(f"\nload average at the end: {load_average()}")
    out = BENCH_DIR / f"perf-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results.to_json(), indent=1))
    print(f"results: {out.relative_to(REPO)}")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
