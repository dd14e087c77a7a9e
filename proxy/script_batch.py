"""Redis scripts of several stages sent in one pipeline: one round trip for all of them.

A call's last steps each run one script on the same Redis: the token charge corrected
(``proxy.ratelimit``), the quota hold settled (``proxy.quota``), the answer stored in
the cache and its claim released (``proxy.cache``). Each stage queues its script with
what to do with the result; ``run`` sends them together and hands each stage its own
result, or the error its own script met (a stage's failure is the stage's business, as
when it ran alone: each logs or ignores it). A script Redis no longer has (restarted,
flushed) is loaded and run again on its own.

The stages still run on their own when there is no batch (the embedded, in-process
stores, and calls of a single stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis import Redis, RedisError
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

Outcome = Callable[[Any], None]  # given the script's result, or the exception it met


class ScriptBatch:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._calls: list[tuple[Script, Sequence[Any], Sequence[Any], Outcome]] = []

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, script: Script, keys: Sequence[Any], args: Sequence[Any], then: Outcome) -> None:
        self._calls.append((script, keys, args, then))

    def later(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Callable[[], Any]:
        """Queue a script whose result the caller reads after ``run``: the returned function
        gives it, or raises the error the script met."""
        outcome: list[Any] = []
        self.add(script, keys, args, outcome.append)

        def result() -> Any:
            found = outcome[0] if outcome else RedisError("the batch did not run")
            if isinstance(found, Exception):
                raise found
            return found

        return result

    def run(self) -> None:
        """Send every queued script in one round trip; each outcome gets its result."""
        calls, self._calls = self._calls, []
        if not calls:
            return
        results = run_scripts(
            self._redis, [(script, keys, args) for script, keys, args, _ in calls]
        )
        for (_, _, _, then), result in zip(calls, results, strict=True):
            then(result)


def run_scripts(
    redis: Redis, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run ``calls`` in one round trip. Each result is the script's reply or, when that
    script failed, the exception (never raised here).

    What redis-py's non-transactional pipeline does, without its per-call machinery
    (command stack, callbacks, reset): every ``EVALSHA`` packed into one write on one
    pooled connection, then each reply read in turn; the connection's own retry policy
    applies to the round trip, as it does to a pipeline's. The commands are packed by
    hiredis itself, as redis-py's packer does with hiredis installed, without its
    per-argument checks (a third of the round trip's CPU, measured).
    """
    if not calls:
        return []
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    try:
        packed: list[bytes] | None = [b"".join(map(hiredis.pack_command, commands))]
    except TypeError:  # an argument hiredis does not take: redis-py's encoder packs them
        packed = None
    pool = redis.connection_pool
    try:
        connection: Any = pool.get_connection()
    except RedisError as exc:  # no connection to be had: every script met it
        return [exc] * len(calls)
    try:
        results: list[Any] = connection.retry.call_with_retry(
            lambda: _exchange(connection, commands, packed), lambda _: connection.disconnect()
        )
    except RedisError as exc:  # the round trip itself failed: every script met it
        connection.disconnect()
        return [exc] * len(calls)
    finally:
        pool.release(connection)
    for index, result in enumerate(results):
        if isinstance(result, NoScriptError):  # Redis restarted or flushed its scripts
            script, keys, args = calls[index]
            try:
                results[index] = script(list(keys), list(args))  # loads it, then runs it
            except RedisError as exc:
                results[index] = exc
    return results


def _exchange(
    connection: Any, commands: list[tuple[Any, ...]], packed: list[bytes] | None
) -> list[Any]:
    """Send ``commands`` (``packed`` if given) in one write; read one reply each (an error
    reply is returned as its exception: the replies after it are still read, so the
    connection stays in step)."""
    connection.send_packed_command(packed or connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies
