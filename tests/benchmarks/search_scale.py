"""Conversation search at scale: 1,000,000 request records with bodies in PostgreSQL, and
how long the first page of each kind of search takes.

    .venv/bin/python -m tests.benchmarks.search_scale [--records 1000000] [--keep]

Creates a fresh PostgreSQL database (``METERGATE_TEST_PG_ADMIN``, default the local
server), migrates it to 0003, COPYs the records and their bodies in (chat prompts and
answers of 10 to 120 words drawn Zipf-skewed from a 20,000-word vocabulary, over 30
days, 40 tenants, 800 keys, sessions, end users, 6% errors, 2% flagged), then upgrades
to head, so migration 0004 builds the full-text index over bodies already there and
0005 moves them into monthly partitions (the
time it takes is printed too). Then it times ``shared.search.search_records`` (what the
Conversations page calls) for each kind of search: once cold, three times warm. The
target is under 2 s for a first page. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from alembic import command
from sqlalchemy import text

from shared.db import alembic_config, make_engine, upgrade
from shared.search import RecordQuery, search_records
from tests.support import create_pg_database, drop_pg_database

TARGET_SECONDS = 2.0
TENANTS, KEYS, DAYS, CHUNK = 40, 800, 30, 100_000
VOCABULARY = 20_000
RARE_WORD, RARE_COUNT = "xylophonist", 25  # planted in a handful of prompts
MEDIUM_WORD, MEDIUM_SHARE = "quartermaster", 0.001
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-6", "claude-haiku-4-5"]
RECORD_COLUMNS = [
    "id", "created_at", "finished_at", "tenant_id", "user_id", "key_id", "dialect", "endpoint",
    "model", "provider", "is_stream", "status", "error_code", "prompt_tokens",
    "completion_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "session_id",
    "end_user", "latency_ms", "is_cached", "cache_saved_usd", "is_flagged", "client_request_id",
]  # fmt: skip


def vocabulary(rng: np.random.Generator) -> np.ndarray:
    """Pronounceable made-up words (none is a planted word)."""
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < VOCABULARY:
        count = int(rng.integers(2, 5))
        words.add("".join(rng.choice(syllables, count)))
    return np.array(sorted(words - {RARE_WORD, MEDIUM_WORD}))


def sentences(
    rng: np.random.Generator, words: np.ndarray, count: int, low: int, high: int
) -> list[str]:
    lengths = rng.integers(low, high, count)
    ranks = np.minimum(rng.zipf(1.15, int(lengths.sum())) - 1, len(words) - 1)
    drawn = words[ranks]
    out, start = [], 0
    for length in lengths:
        out.append(" ".join(drawn[start : start + length]))
        start += length
    return out


def chunk_rows(
    rng: np.random.Generator,
    words: np.ndarray,
    count: int,
    end: datetime,
    rare_at: set[int],
    offset: int,
) -> tuple[str, str]:
    """One chunk of records and of their bodies, as COPY text."""
    records, bodies = io.StringIO(), io.StringIO()
    prompts = sentences(rng, words, count, 10, 60)
    answers = sentences(rng, words, count, 20, 120)
    seconds = rng.uniform(0, DAYS * 86400, count)
    keys = rng.integers(0, KEYS, count)
    models = rng.integers(0, len(MODELS), count)
    outcome = rng.random(count)
    for i in range(count):
        record_id = str(uuid.uuid4())
        prompt = prompts[i]
        if offset + i in rare_at:
            prompt += f" {RARE_WORD}"
        if rng.random() < MEDIUM_SHARE:
            prompt += f" {MEDIUM_WORD}"
        model = MODELS[models[i]]
        provider = "anthropic" if model.startswith("claude") else "openai"
        at = end - timedelta(seconds=float(seconds[i]))
        status, code = (502, "upstream_error") if outcome[i] < 0.04 else (200, "\\N")
        if 0.04 <= outcome[i] < 0.06:
            status, code = 429, "rate_limit_exceeded"
        key = int(keys[i])
        tenant, user = key % TENANTS + 1, key // 2 + 1
        session = f"s-{key}-{int(seconds[i]) // 1800}"
        fields = [
            record_id, at.isoformat(), (at + timedelta(seconds=1)).isoformat(), tenant, user,
            key + 1, "openai" if provider == "openai" else "anthropic",
            "chat.completions" if provider == "openai" else "messages", model, provider, "f",
            status, code, len(prompt) // 4, len(answers[i]) // 4, 0, 0, "0.0001", session,
            f"end-user-{key}-{i % 37}", 900.0, "f", 0, "t" if outcome[i] > 0.98 else "f",
            f"req-{offset + i}",
        ]  # fmt: skip
        records.write("\t".join(str(f) for f in fields) + "\n")
        request = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})
        answer = json.dumps(
            {"id": f"chatcmpl-{offset + i}", "object": "chat.completion",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": answers[i]}}]}
        )  # fmt: skip
        bodies.write(f"{record_id}\t{_copy_text(request)}\t{_copy_text(answer)}\n")
    return records.getvalue(), bodies.getvalue()


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load(url: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    rare_at = set(rng.choice(count, RARE_COUNT, replace=False).tolist())
    end = datetime.now(UTC)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection:
        for offset in range(0, count, CHUNK):
            size = min(CHUNK, count - offset)
            records, bodies = chunk_rows(rng, words, size, end, rare_at, offset)
            with connection.cursor() as cursor:
                columns = ", ".join(RECORD_COLUMNS)
                with cursor.copy(f"COPY request_records ({columns}) FROM STDIN") as copy:
                    copy.write(records)
                with cursor.copy(
                    "COPY request_bodies (record_id, request_body, response_body) FROM STDIN"
                ) as copy:
                    copy.write(bodies)
            connection.commit()
            print(f"  loaded {offset + size:>9,} records", flush=True)


def build(url: str, count: int, seed: int) -> None:
    upgrade(url, "0003")
    started = time.perf_counter()
    load(url, count, seed)
    print(f"loaded {count:,} records with bodies in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    command.upgrade(alembic_config(url), "0004")  # only the index: no rollup backfill
    print(f"migration 0004 indexed them in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    command.upgrade(alembic_config(url), "head")  # 0005: the log partitioned by month
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute("ANALYZE request_records")  # a partitioned parent is never
        connection.execute("ANALYZE request_bodies")  # analysed by autovacuum
    print(f"migration 0005 partitioned them by month in {time.perf_counter() - started:.0f} s")


def measure(run: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    started = time.perf_counter()
    run()
    cold = time.perf_counter() - started
    warm = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        warm.append(time.perf_counter() - started)
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--database", help="time the searches on this database a --keep run left (no loading)"
    )
    args = parser.parse_args()
    url = args.database or create_pg_database()
    print(f"database: {url}")
    try:
        if not args.database:
            build(url, args.records, args.seed)
        engine = make_engine(url)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if not args.database:
                connection.execute(text("VACUUM ANALYZE request_records"))
                connection.execute(text("VACUUM ANALYZE request_bodies"))
        with engine.connect() as connection:
            some = connection.execute(
                text("SELECT id, session_id, end_user, tenant_id FROM request_records LIMIT 1")
            ).one()
        now = datetime.now(UTC)
        words = vocabulary(np.random.default_rng(args.seed))  # as load() drew it
        common, second = str(words[0]), str(words[1])  # Zipf ranks 1 and 2
        searches = {
            "latest, no filter": RecordQuery(),
            f"text: rare word ({RARE_COUNT} hits)": RecordQuery(text=RARE_WORD),
            "text: 0.1% of records": RecordQuery(text=MEDIUM_WORD),
            "text: most common word": RecordQuery(text=common),
            "text: two common words": RecordQuery(text=f"{common} {second}"),
            'text: "common phrase"': RecordQuery(text=f'"{common} {second}"'),
            "text: rare -common": RecordQuery(text=f"{MEDIUM_WORD} -{second}"),
            "text + tenant + last week": RecordQuery(
                text=MEDIUM_WORD, tenant_id=some.tenant_id, since=now - timedelta(days=7)
            ),
            "text: no hit": RecordQuery(text="zzzzqqqq"),
            "request id": RecordQuery(request_id="req-4242"),
            "session id": RecordQuery(session_id=some.session_id),
            "end user": RecordQuery(end_user=some.end_user),
            "key": RecordQuery(key_id=7),
            "tenant": RecordQuery(tenant_id=some.tenant_id),
            "status 5xx": RecordQuery(status="5xx"),
            "flagged": RecordQuery(flag="flagged"),
            "model + last day": RecordQuery(model="gpt-4o", since=now - timedelta(days=1)),
        }
        print(f"\n{'search (first page of 50)':<34} {'cold s':>8} {'warm s':>8} {'hits':>5}")
        worst = 0.0
        for name, query in searches.items():
            hits = len(search_records(engine, query).records)
            cold, warm = measure(lambda q=query: search_records(engine, q))
            worst = max(worst, cold, warm)
            flag = "" if max(cold, warm) < TARGET_SECONDS else "  SLOW"
            print(f"{name:<34} {cold:>8.3f} {warm:>8.3f} {hits:>5}{flag}")
        pages = 0
        cursor = None
        started = time.perf_counter()
        while pages < 20:
            page = search_records(engine, RecordQuery(text=common), cursor=cursor)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        per_page = (time.perf_counter() - started) / pages
        print(f"{'text: common word, pages 1-20':<34} {'':>8} {per_page:>8.3f}  (per page)")
        print(f"\nslowest: {worst:.3f} s (target {TARGET_SECONDS:.0f} s)")
        engine.dispose()
    finally:
        if args.keep or args.database:
            print(f"kept {url}")
        else:
            drop_pg_database(url)


if __name__ == "__main__":
    main()
