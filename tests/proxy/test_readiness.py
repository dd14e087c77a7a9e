"""Idle pooled connections are checked by the kernel's poll (``proxy.readiness``), and
the checks still see what redis-py's and urllib3's own see."""

from __future__ import annotations

import ast
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from redis import BlockingConnectionPool
from redis.connection import DefaultParser

from proxy.app import _redis_for
from proxy.readiness import RedisParser
from tests.support import kill_idle_connection


@pytest.fixture(params=[RedisParser, DefaultParser], ids=["ours", "redis-py's"])
def pool(redis_url: str, request: pytest.FixtureRequest) -> Iterator[BlockingConnectionPool]:
    """A pool whose connections check with our parser, or with redis-py's own: each test
    asserts the same answers of both."""
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=4, parser_class=request.param)
    try:
        yield pool
    finally:
        pool.disconnect()


def _wait_readable(connection: redis.Connection) -> None:
    """Until the server's bytes (or its close) reach the connection's socket."""
    readable, _, _ = select.select([connection._sock], [], [], 10)
    assert readable


def test_the_gateways_redis_checks_with_the_quick_parser(redis_url: str) -> None:
    client = _redis_for(redis_url)
    try:
        assert client.connection_pool.connection_kwargs["parser_class"] is RedisParser
        assert client.ping()
    finally:
        client.close()


def test_an_idle_connection_reads_as_clean(pool: BlockingConnectionPool) -> None:
    connection = pool.get_connection()
    try:
        connection.send_command("PING")
        assert connection.read_response() in (b"PONG", "PONG")
        assert connection.can_read() is False
    finally:
        pool.release(connection)


def test_a_reply_left_on_the_socket_is_seen(pool: BlockingConnectionPool) -> None:
    dirty = pool.get_connection()
    try:
        dirty.send_command("PING")  # its reply is never read
        _wait_readable(dirty)
        assert dirty.can_read() is True
    finally:
        dirty.disconnect()
        pool.release(dirty)


def test_a_reply_already_in_the_parsers_buffer_is_seen(pool: BlockingConnectionPool) -> None:
    connection = pool.get_connection()
    try:
        connection._parser._reader.feed(b"+PONG\r\n")  # as if read along with an earlier reply
        assert connection.can_read() is True
    finally:
        connection.disconnect()
        pool.release(connection)


def test_a_connection_the_server_closed_is_not_handed_out(
    pool: BlockingConnectionPool, redis_url: str
) -> None:
    idle = kill_idle_connection(pool, redis_url)
    _wait_readable(idle)  # the server's close has arrived
    with pytest.raises(redis.ConnectionError, match="closed by server"):
        idle.can_read()
    again = pool.get_connection()
    try:
        again.send_command("PING")
        assert again.read_response() in (b"PONG", "PONG")
    finally:
        pool.release(again)


# In a gevent process: the check never switches to gevent's hub, where gevent's own
# patched poll does; both see the same bytes.
GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import select, socket
import greenlet
from proxy.readiness import is_readable_now

switches = []
greenlet.settrace(lambda event, args: switches.append(event))

def patched_poll(sock):
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))

ours, peer = socket.socketpair()
seen = []
for check in (is_readable_now, patched_poll):
    switches.clear()
    empty = check(ours)
    peer.send(b"x")
    full = check(ours)
    ours.recv(1)
    seen.append((check.__name__, empty, full, len(switches)))
print(seen)
"""


def test_in_a_gevent_process_the_check_never_waits_on_the_hub() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    ours, gevents = ast.literal_eval(out)
    assert ours == ("is_readable_now", False, True, 0)
    assert gevents[:3] == ("patched_poll", False, True) and gevents[3] > 0
