"""A call's last scripts go to Redis in one round trip; each stage gets its own outcome.

On a real Redis (the tests' database, emptied before and after).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from proxy.script_batch import ScriptBatch
from tests.support import kill_idle_connection

INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('stage failed')"


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def _count_round_trips(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    connection_class = client.connection_pool.connection_class
    original = connection_class.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counted)
    return sent


def test_scripts_of_several_stages_go_in_one_round_trip(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    incr = client.register_script(INCR_BY)
    incr(keys=["warm-up"], args=[0])  # loaded: the batch finds it by its SHA
    keys = [f"batch:{uuid.uuid4().hex}" for _ in range(3)]
    outcomes: dict[str, Any] = {}
    batch = ScriptBatch(client)
    for index, key in enumerate(keys):
        batch.add(incr, [key], [index + 1], functools.partial(outcomes.__setitem__, key))
    sent = _count_round_trips(client, monkeypatch)

    batch.run()

    assert len(sent) == 1
    assert outcomes == {keys[0]: 1, keys[1]: 2, keys[2]: 3}
    assert [int(client.get(key) or 0) for key in keys] == [1, 2, 3]
    client.delete(*keys)


def test_a_failing_script_reaches_only_its_own_stage(client: redis.Redis) -> None:
    incr, fail = client.register_script(INCR_BY), client.register_script(FAIL)
    key = f"batch:{uuid.uuid4().hex}"
    outcomes: list[Any] = []
    batch = ScriptBatch(client)
    batch.add(fail, [key], [], outcomes.append)
    batch.add(incr, [key], [5], outcomes.append)

    batch.run()

    assert isinstance(outcomes[0], ResponseError) and "stage failed" in str(outcomes[0])
    assert outcomes[1] == 5
    client.delete(key)


def test_scripts_redis_forgot_are_loaded_and_run(client: redis.Redis) -> None:
    incr = client.register_script(INCR_BY)
    client.script_flush()  # as after a Redis restart
    key = f"batch:{uuid.uuid4().hex}"
    outcomes: list[Any] = []
    batch = ScriptBatch(client)
    batch.add(incr, [key], [7], outcomes.append)

    batch.run()

    assert outcomes == [7]
    assert int(client.get(key) or 0) == 7
    client.delete(key)


def test_an_unreachable_redis_is_every_stages_outcome_and_nothing_raises() -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2, retry_on_error=[])
    outcomes: list[Any] = []
    batch = ScriptBatch(down)
    script = down.register_script(INCR_BY)
    batch.add(script, ["a"], [1], outcomes.append)
    batch.add(script, ["b"], [1], outcomes.append)

    batch.run()

    assert len(outcomes) == 2
    assert all(isinstance(outcome, redis.ConnectionError) for outcome in outcomes)


def test_a_result_read_later_is_the_scripts_reply_or_raises_its_error(
    client: redis.Redis,
) -> None:
    incr, fail = client.register_script(INCR_BY), client.register_script(FAIL)
    key = f"batch:{uuid.uuid4().hex}"
    batch = ScriptBatch(client)
    counted = batch.later(incr, [key], [3])
    failed = batch.later(fail, [key], [])

    batch.run()

    assert counted() == 3
    with pytest.raises(ResponseError, match="stage failed"):
        failed()
    client.delete(key)


def test_a_connection_redis_closed_costs_no_stage_its_outcome(
    client: redis.Redis, redis_url: str
) -> None:
    """Redis dropped the pooled connection between calls (restart, idle timeout, kill):
    the next batch still runs every script once, on a fresh connection."""
    incr = client.register_script(INCR_BY)
    key = f"batch:{uuid.uuid4().hex}"
    first = ScriptBatch(client)
    read_first = first.later(incr, [key], [1])
    first.run()
    kill_idle_connection(client.connection_pool, redis_url)

    second = ScriptBatch(client)
    read_second = second.later(incr, [key], [10])
    second.run()

    assert (read_first(), read_second()) == (1, 11)
    assert int(client.get(key) or 0) == 11
    client.delete(key)


ECHO_ARGS = "return ARGV"


@pytest.mark.parametrize(
    "args",
    [
        ["text", "non-ASCII: é ✓", b"bytes\x00\xff", 7, -3, 0.25, 1e-07, 12345678901234567890],
        [memoryview(b"view"), bytearray(b"array")],
    ],
)
def test_arguments_reach_the_script_as_redis_py_sends_them(
    client: redis.Redis, args: list[Any]
) -> None:
    """The batch packs its commands with hiredis directly: every kind of argument the
    stages pass arrives as the script would get it called through redis-py."""
    echo = client.register_script(ECHO_ARGS)
    expected = echo(keys=["k"], args=args)
    outcomes: list[Any] = []
    batch = ScriptBatch(client)
    batch.add(echo, ["k"], args, outcomes.append)
    batch.run()
    assert outcomes == [expected]
