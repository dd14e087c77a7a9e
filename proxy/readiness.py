"""Whether an idle pooled connection is still clean, asked of the kernel directly.

Before a pool hands out an idle connection, redis-py checks it holds no stray reply and
the server has not closed it, and urllib3 checks the provider has not closed it (a
``poll`` with a zero timeout). In a gevent worker ``select.poll`` is gevent's: watchers,
a timeout and a switch to its hub for a check that cannot block anyway. Measured in a
gevent process, redis-py's check took about 100 us of a call's time, twice a call; the
kernel's poll takes about 1 us. ``is_readable_now`` uses the kernel's poll whatever
gevent has patched; ``RedisParser`` and the hot path's urllib3 connections
(``proxy.providers.wire``) check with it.
"""

from __future__ import annotations

import select
import socket

from gevent.monkey import get_original
from redis._parsers import _HiredisParser

_poll = get_original("select", "poll")  # the kernel's, patched by gevent or not


def is_readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes to read, or was closed by its peer, without waiting."""
    poller = _poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class RedisParser(_HiredisParser):  # type: ignore[misc]  # redis-py's parser is untyped
    """redis-py's hiredis parser, whose zero-timeout check answers "nothing to read"
    through ``is_readable_now``.

    Only that answer is taken here: with no reply buffered and nothing on the socket,
    redis-py's own check would say False after its poll. Anything else (a buffered reply,
    bytes or a close on the socket, TLS bytes already decrypted, a timeout) goes to
    redis-py's check as it is. It reads the parser's ``_reader`` and ``_sock`` as redis-py
    8 keeps them (``pyproject.toml`` asks for redis>=8.1); ``tests/proxy/test_readiness.py``
    checks its answers against redis-py's own parser case by case.
    """

    def can_read(self, timeout: float = 0) -> bool:
        reader, sock = getattr(self, "_reader", None), getattr(self, "_sock", None)
        if (
            timeout == 0
            and reader is not None
            and sock is not None
            and not reader.has_data()
            and not (hasattr(sock, "pending") and sock.pending())  # TLS bytes decrypted
            and not is_readable_now(sock)
        ):
            return False
        return bool(super().can_read(timeout))
