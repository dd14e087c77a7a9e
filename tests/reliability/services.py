"""Real processes the reliability tests (and the soak script) start, break and restart.

- ``RedisServer``: a private ``redis-server`` on a free port (never the shared one), that
  can be stopped, frozen (SIGSTOP: up but unresponsive) and restarted on the same port.
- ``GunicornProxy``: ``metergate serve proxy`` (gunicorn, several workers) as a
  subprocess, its output in a log file, its workers found through ``/proc``.
- ``worker_serving``: which process holds one TCP connection (Linux ``/proc``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx2
import redis

from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own: no persistence, so a restart empties it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.is_up, timeout=15)
        return self

    def is_up(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        """Stop the server (its data goes with it: no persistence)."""
        process, self._process = self._process, None
        if process is None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        process.terminate()
        process.wait(15)

    def freeze(self) -> None:
        """Up but unresponsive: connections open, no command is answered."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)


class GunicornProxy:
    """``metergate serve proxy`` in a subprocess; ``env`` is its whole environment."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, workers: int = 2) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.workers = workers
        self._env = dict(env)
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240.0) -> GunicornProxy:
        self._log = self.log_path.open("ab")
        command = [sys.executable, "-m", "proxy.cli", "serve", "proxy"]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        self.process = subprocess.Popen(
            command, env=self._env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for(self._is_serving, timeout=timeout, interval=0.2)
        return self

    def _is_serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{self.log_tail()}")
        try:
            answered = httpx2.get(self.base_url + "/healthz", timeout=2).status_code == 200
        except httpx2.HTTPError:
            return False
        return answered and len(self.worker_pids()) == self.workers

    def worker_pids(self) -> list[int]:
        """The master's live children (the workers)."""
        assert self.process is not None
        return [pid for pid in children_of(self.process.pid) if not _is_background_job(pid)]

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM (graceful: workers flush their records); the exit status."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(15)
        if self._log is not None:
            self._log.close()
        return int(process.returncode)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


def _is_background_job(pid: int) -> bool:
    """The master's other child, ``metergate alerts run`` (not a gunicorn worker)."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"alerts" in argv


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def worker_serving(pids: list[int], server_port: int, client_port: int) -> int | None:
    """The process among ``pids`` holding the server end of the TCP connection
    127.0.0.1:client_port -> 127.0.0.1:server_port, if any."""
    inode = _connection_inode(server_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == wanted:
                    return pid
            except OSError:
                continue
    return None


def _connection_inode(local_port: int, remote_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == local_port and (
                int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                return inode
    return None


def sim_stats(sim_base_url: str) -> dict[str, Any]:
    response = httpx2.get(sim_base_url + "/_sim/stats", timeout=5)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def sim_configure(sim_base_url: str, **changes: float) -> None:
    httpx2.post(sim_base_url + "/_sim/config", json=changes, timeout=5).raise_for_status()
