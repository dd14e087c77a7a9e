"""The hot path: no SQL and a fixed, small number of Redis round trips per call.

The real app on PostgreSQL and Redis, served over HTTP, every feature on (key auth,
requests- and tokens-per-minute limits, monthly token and USD quotas, a tenant cap,
the response cache, screening, SQL records), called with the real openai SDK. After a
warm-up (the key, tier, prices, screening rules and quota counters loaded once), each
measured call is counted on the thread that served it:

- SQL: SQLAlchemy's ``before_cursor_execute`` on the app's engine, per thread;
- Redis: every ``send_packed_command`` of a redis-py connection (one per command, one
  per pipeline), per thread, which is one round trip each.

Only threads that served a request count (noted by a ``before_request`` hook); the
record writer and the config poller keep running in their own threads, as deployed, and
are left out. Each call gets its own client, so its connection and the server thread
that served it end with it, and that thread is joined before the counts are read.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from flask import Flask
from redis.connection import AbstractConnection
from sqlalchemy import event

from proxy.simulator import SimulatorThread
from shared.accounts import Limits
from tests.support import Accounts, ProxyServer, running_proxy, seed_accounts, settings_for

GPT = "gpt-4o-mini"

# Redis round trips per call, stage by stage (the user's tier sets rpm and tpm; the key
# has no overrides of its own, so only the user scope is rate limited):
#   admit          1  one pipeline (proxy.script_batch) of three stages' scripts:
#                     rate limits: flask-limiter's (limits') scripts, the request counted
#                       in the moving window and the tokens charged in the sliding window,
#                       each with the read of its window for the x-ratelimit-* headers;
#                     cache lookup: the entry, or on a miss the single-flight claim;
#                     quota reserve: every scope (key, user, tenant, global); a hit's hold
#                       is released when it settles
#   settle         1  one pipeline: the answer stored in the cache and its claim released
#                     (a miss), the token charge corrected to the real usage (sliding
#                     window hit), the quota hold settled (or released, for a hit)
MISS_ROUND_TRIPS = 1 + 1
HIT_ROUND_TRIPS = 1 + 1


@dataclass
class Counts:
    sql: int
    redis: int


class RoundTrips:
    """SQL statements and Redis round trips, per thread that served a request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sql: Counter[int] = Counter()
        self._redis: Counter[int] = Counter()
        self.request_threads: set[threading.Thread] = set()

    def note_sql(self, *_: Any) -> None:
        with self._lock:
            self._sql[threading.get_ident()] += 1

    def note_redis(self) -> None:
        with self._lock:
            self._redis[threading.get_ident()] += 1

    def note_request(self) -> None:
        with self._lock:
            self.request_threads.add(threading.current_thread())

    def measure(self, call: Callable[[], None]) -> Counts:
        """Run ``call``; the counts of the server threads that served it."""
        with self._lock:
            self.request_threads.clear()
            self._sql.clear()
            self._redis.clear()
        call()
        for thread in list(self.request_threads):
            thread.join(10)
            assert not thread.is_alive(), "the server thread did not finish the call"
        with self._lock:
            served = {thread.ident for thread in self.request_threads}
            assert served, "no request reached the app"
            return Counts(
                sql=sum(n for ident, n in self._sql.items() if ident in served),
                redis=sum(n for ident, n in self._redis.items() if ident in served),
            )


@pytest.fixture(scope="module")
def counted(
    pg_url: str,
    redis_url: str,
    simulator: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyServer, RoundTrips, Accounts]]:
    trips = RoundTrips()
    settings = settings_for(
        pg_url,
        simulator.base_url,
        Path(tmp_path_factory.mktemp("hot-path")),
        redis_url=redis_url,
    )
    with running_proxy(settings) as server:
        acct = seed_accounts(
            server.state.engine,
            limits=Limits(
                rpm=100_000,
                tpm=100_000_000,
                monthly_tokens=1_000_000_000,
                monthly_usd=Decimal(100_000),
                cache_ttl_seconds=600,
            ),
        )
        server.state.config.check_version()  # the poller will not clear what calls cache
        app: Flask = server.app
        app.before_request(trips.note_request)
        event.listen(server.state.engine, "before_cursor_execute", trips.note_sql)
        original = AbstractConnection.send_packed_command

        def counting_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            trips.note_redis()
            original(self, *args, **kwargs)

        AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
        try:
            yield server, trips, acct
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
            event.remove(server.state.engine, "before_cursor_execute", trips.note_sql)


def _chat(
    server: ProxyServer, key: str, prompt: str, *, stream: bool = False
) -> Callable[[], None]:
    def call() -> None:
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as sdk:
            messages: Any = [{"role": "user", "content": prompt}]
            if stream:
                chunks = list(
                    sdk.chat.completions.create(model=GPT, messages=messages, stream=True)
                )
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                answer = sdk.chat.completions.create(model=GPT, messages=messages)
                assert answer.choices[0].message.content

    return call


def _warm_up(server: ProxyServer, trips: RoundTrips, acct: Accounts) -> None:
    """Load what each process loads once: the key, prices, rules, the month's counters."""
    trips.measure(_chat(server, acct.key, "warm-up question"))
    trips.measure(_chat(server, acct.key, "warm-up stream", stream=True))


def test_non_streamed_miss_makes_no_sql_and_fixed_redis_round_trips(
    counted: tuple[ProxyServer, RoundTrips, Accounts],
) -> None:
    server, trips, acct = counted
    _warm_up(server, trips, acct)

    counts = trips.measure(_chat(server, acct.key, "a question never asked before: miss"))

    assert counts == Counts(sql=0, redis=MISS_ROUND_TRIPS)


def test_streamed_miss_makes_no_sql_and_fixed_redis_round_trips(
    counted: tuple[ProxyServer, RoundTrips, Accounts],
) -> None:
    server, trips, acct = counted
    _warm_up(server, trips, acct)

    counts = trips.measure(_chat(server, acct.key, "a stream never asked for before", stream=True))

    assert counts == Counts(sql=0, redis=MISS_ROUND_TRIPS)


def test_cache_hit_makes_no_sql_and_fixed_redis_round_trips(
    counted: tuple[ProxyServer, RoundTrips, Accounts],
) -> None:
    server, trips, acct = counted
    _warm_up(server, trips, acct)
    trips.measure(_chat(server, acct.key, "a question asked twice"))

    counts = trips.measure(_chat(server, acct.key, "a question asked twice"))

    assert counts == Counts(sql=0, redis=HIT_ROUND_TRIPS)


def test_a_kept_responses_answer_makes_no_sql_and_fixed_redis_round_trips(
    counted: tuple[ProxyServer, RoundTrips, Accounts],
) -> None:
    """A Responses API answer the provider keeps has its id remembered with the caller's
    tenant (for ``previous_response_id``): in the settle round trip, not one of its own."""
    server, trips, acct = counted
    _warm_up(server, trips, acct)

    def ask(text: str) -> Callable[[], None]:
        def call() -> None:
            with openai.OpenAI(
                base_url=server.base_url + "/v1", api_key=acct.key, max_retries=0
            ) as sdk:
                answer = sdk.responses.create(model=GPT, input=text)
                assert answer.output_text and answer.id

        return call

    trips.measure(ask("the Responses endpoint's first call in this process"))
    counts = trips.measure(ask("a response to keep, never asked for before: a miss"))

    assert counts == Counts(sql=0, redis=MISS_ROUND_TRIPS)


def test_records_still_reach_sql_from_the_writer(
    counted: tuple[ProxyServer, RoundTrips, Accounts],
) -> None:
    """The calls above made no SQL on their threads, yet every one is in the log."""
    server, trips, acct = counted
    before = server.record_count()
    trips.measure(_chat(server, acct.key, "recorded off the hot path"))
    assert server.record_count() == before + 1
