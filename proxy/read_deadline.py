"""A deadline for reading request bodies: a client that drips its body cannot hold a worker.

The WSGI servers (gunicorn's workers, werkzeug's) read a body from a blocking socket,
and one read returns only once the bytes asked for have arrived, so a socket timeout
cannot stop a client that sends one byte a second. Instead one watchdog thread per
process shuts down the read side of every socket whose body read passed its deadline:
the blocked read then ends at once, short, and the call is refused with 408
``request_timeout`` (``proxy.validate.read_body``). The answer still goes out; the
connection is not kept alive.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25


class ReadDeadlines:
    """Body reads in progress in this process, each with its deadline."""

    def __init__(self, seconds: float, *, tick_seconds: float = TICK_SECONDS) -> None:
        self.seconds = seconds
        self._tick_seconds = tick_seconds
        self._lock = threading.Lock()
        self._reads: dict[int, tuple[float, socket.socket]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def watch(self, sock: object) -> Iterator[Callable[[], bool]]:
        """Bound the reads from ``sock`` made inside the block; yields "is it past?".

        ``sock`` is the server's client socket (``gunicorn.socket`` / ``werkzeug.socket``
        in the WSGI environ); anything else, and TLS sockets, are not watched (TLS is
        for the proxy in front to terminate, and to bound).
        """
        deadline = time.monotonic() + self.seconds
        # A TLS socket cannot be half shut without breaking the answer that follows.
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            yield lambda: time.monotonic() >= deadline
            return
        self._ensure_watchdog()
        read_id = next(self._ids)
        with self._lock:
            self._reads[read_id] = (deadline, sock)
        try:
            yield lambda: time.monotonic() >= deadline
        finally:
            with self._lock:
                self._reads.pop(read_id, None)

    def _ensure_watchdog(self) -> None:
        """Start the watchdog in this process (again after a fork: threads do not follow)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._reads.clear()
            self._thread = threading.Thread(
                target=self._run, name="body-read-deadline", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._tick_seconds)
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._reads.items() if deadline <= now]
                sockets = [self._reads.pop(key)[1] for key in overdue]
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:  # already closed by the client or the server
                    continue
                log.warning("event=body_read_timeout seconds=%s", self.seconds)
