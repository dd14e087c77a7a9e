"""Dashboards at scale: 1,000,000 request records in PostgreSQL, and how long each page's
queries take.

    .venv/bin/python -m tests.benchmarks.console_scale [--records 1000000] [--days 30] [--keep]

Creates a fresh PostgreSQL database (``METERGATE_TEST_PG_ADMIN``, default the local
server), migrates it, adds 40 tenants, 400 users and 800 keys, COPYs the records in
(spread over ``--days`` up to now, keys Zipf-skewed, 8 models, ~30k end users, 12%
cache hits, 6% errors and refusals, lognormal latencies), builds the rollups with
``shared.rollup.rebuild``, and then times, per page, every query the page runs on
its first render: with its default range, over the whole month, and for one tenant.
Each set runs once cold and three times warm; the target is under 2 s. Not collected
by pytest (``tests/benchmarks`` is excluded in pyproject).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import Engine, insert, text

from shared import analytics, billing, budget
from shared.analytics import Dimension, Filters
from shared.db import make_engine, upgrade
from shared.models import ApiKey, Tenant, Tier, User
from shared.rollup import ROLLUPS, rebuild
from shared.usage import month_of
from tests.support import create_pg_database, drop_pg_database

TARGET_SECONDS = 2.0
TENANTS, USERS, KEYS = 40, 400, 800
# name, provider, USD per 1M input / output tokens, weight, median latency ms
MODELS = [
    ("gpt-4o-mini", "openai", 0.15, 0.60, 0.30, 900),
    ("gpt-4o", "openai", 2.50, 10.0, 0.15, 1800),
    ("gpt-4.1-mini", "openai", 0.40, 1.60, 0.10, 1000),
    ("o4-mini", "openai", 1.10, 4.40, 0.05, 4000),
    ("claude-3-5-haiku", "anthropic", 0.80, 4.00, 0.15, 1100),
    ("claude-sonnet-4", "anthropic", 3.00, 15.0, 0.15, 2500),
    ("claude-opus-4", "anthropic", 15.0, 75.0, 0.03, 5000),
    ("text-embedding-3-small", "openai", 0.02, 0.0, 0.07, 150),
]
# status, error_code, refusal_reason, probability
OUTCOMES = [
    (200, None, None, 0.94),
    (429, "rate_limit_exceeded", "rate_limit", 0.02),
    (429, "insufficient_quota", "quota", 0.01),
    (400, "content_policy_violation", "screening", 0.005),
    (502, "upstream_error", None, 0.02),
    (504, None, None, 0.005),
]
COLUMNS = [
    "id", "created_at", "finished_at", "tenant_id", "user_id", "key_id", "dialect", "endpoint",
    "model", "provider", "is_stream", "status", "error_code", "prompt_tokens",
    "completion_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "end_user",
    "latency_ms", "upstream_latency_ms", "ttft_ms", "overhead_ms", "is_cached",
    "cache_saved_usd", "refusal_reason", "is_flagged",
]  # fmt: skip


def seed_accounts(engine: Engine, rng: np.random.Generator) -> None:
    """Tenants (a third with a cap), one tier with a monthly budget, users, keys."""
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(Tier),
            [{"id": 1, "name": "bench", "monthly_usd": 400, "created_at": now,
              "is_prompt_cache_marked": False}],
        )  # fmt: skip
        connection.execute(
            insert(Tenant),
            [
                {"id": t, "name": f"tenant-{t:02d}", "monthly_usd": 2000 if t % 3 == 0 else None,
                 "body_storage": "full", "created_at": now}
                for t in range(1, TENANTS + 1)
            ],
        )  # fmt: skip
        connection.execute(
            insert(User),
            [
                {"id": u, "email": f"user-{u:03d}@tenant-{1 + (u - 1) % TENANTS:02d}.test",
                 "tenant_id": 1 + (u - 1) % TENANTS, "tier_id": 1, "created_at": now}
                for u in range(1, USERS + 1)
            ],
        )  # fmt: skip
        connection.execute(
            insert(ApiKey),
            [
                {"id": k, "user_id": 1 + (k - 1) % USERS, "name": f"key-{k}",
                 "prefix": f"mg-{k:06d}", "secret_hash": uuid.uuid4().hex * 2,
                 "environment": "prod", "created_at": now,
                 "monthly_tokens": 50_000_000 if k % 10 == 0 else None}
                for k in range(1, KEYS + 1)
            ],
        )  # fmt: skip
        for table in ("tiers", "tenants", "users", "api_keys"):
            connection.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10000)")
            )
    del rng


def generate(count: int, end: datetime, days: int, rng: np.random.Generator) -> pd.DataFrame:
    """``count`` records spread over ``days`` up to ``end``, as COPY-ready columns."""
    span = days * 86_400.0
    created = pd.to_datetime(end.timestamp() - rng.uniform(0, span, count), unit="s", utc=True)
    key_weights = 1.0 / np.arange(1, KEYS + 1) ** 1.1
    keys = rng.choice(np.arange(1, KEYS + 1), size=count, p=key_weights / key_weights.sum())
    users = 1 + (keys - 1) % USERS
    tenants = 1 + (users - 1) % TENANTS
    model_index = rng.choice(len(MODELS), size=count, p=[m[4] for m in MODELS])
    names = np.array([m[0] for m in MODELS], dtype=object)
    providers = np.array([m[1] for m in MODELS], dtype=object)
    price_in = np.array([m[2] for m in MODELS])[model_index]
    price_out = np.array([m[3] for m in MODELS])[model_index]
    median_ms = np.array([m[5] for m in MODELS], dtype=float)[model_index]
    outcome = rng.choice(len(OUTCOMES), size=count, p=[o[3] for o in OUTCOMES])
    status = np.array([o[0] for o in OUTCOMES])[outcome]
    ok = status < 400
    cached = ok & (rng.random(count) < 0.12)
    prompt = np.maximum(1, rng.lognormal(6.5, 1.0, count)).astype(np.int64)
    completion = np.where(ok, np.maximum(1, rng.lognormal(5.0, 0.9, count)), 0).astype(np.int64)
    prompt_cached = ok & ~cached & (rng.random(count) < 0.2)
    cache_read = np.where(prompt_cached, (prompt * rng.uniform(0.3, 0.9, count)), 0)
    cache_read = cache_read.astype(np.int64)
    full_cost = (prompt * price_in + completion * price_out) / 1e6
    saved_by_prompt_cache = cache_read * price_in * 0.9 / 1e6
    cost = np.where(cached | ~ok, 0.0, full_cost - saved_by_prompt_cache)
    saved = np.where(cached, full_cost, saved_by_prompt_cache)
    latency = np.where(
        cached, rng.lognormal(np.log(3.0), 0.5, count), median_ms * rng.lognormal(0, 0.6, count)
    )
    overhead = rng.lognormal(np.log(2.5), 0.7, count)
    upstream = np.where(cached | (status == 429) | (status == 400), np.nan, latency - overhead)
    is_stream = rng.random(count) < 0.4
    ttft = np.where(
        is_stream & ok & ~cached, np.maximum(upstream, 1) * rng.uniform(0.1, 0.4, count), np.nan
    )
    has_end_user = rng.random(count) < 0.7
    end_user_rank = rng.zipf(1.3, count) % 400
    end_users = np.where(
        has_end_user,
        pd.Series(keys).astype(str).radd("eu-k").str.cat(pd.Series(end_user_rank).astype(str), "-"),
        None,
    )
    frame = pd.DataFrame(
        {
            "id": [str(uuid.uuid4()) for _ in range(count)],
            "created_at": created,
            "finished_at": created + pd.to_timedelta(latency, unit="ms"),
            "tenant_id": tenants,
            "user_id": users,
            "key_id": keys,
            "dialect": np.where(providers[model_index] == "openai", "openai", "anthropic"),
            "endpoint": np.where(model_index == 7, "embeddings", "chat.completions"),
            "model": names[model_index],
            "provider": providers[model_index],
            "is_stream": is_stream,
            "status": status,
            "error_code": np.array([o[1] for o in OUTCOMES], dtype=object)[outcome],
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cache_read_tokens": cache_read,
            "cache_write_tokens": np.zeros(count, dtype=np.int64),
            "cost_usd": np.round(cost, 8),
            "end_user": end_users,
            "latency_ms": latency,
            "upstream_latency_ms": upstream,
            "ttft_ms": ttft,
            "overhead_ms": overhead,
            "is_cached": cached,
            "cache_saved_usd": np.round(saved, 8),
            "refusal_reason": np.array([o[2] for o in OUTCOMES], dtype=object)[outcome],
            "is_flagged": np.zeros(count, dtype=bool),
        }
    )
    return frame[COLUMNS]


def copy_records(url: str, count: int, days: int, end: datetime, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    chunk = 100_000
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy(
            f"COPY request_records ({', '.join(COLUMNS)}) FROM STDIN (FORMAT csv)"
        ) as copy:
            for start in range(0, count, chunk):
                frame = generate(min(chunk, count - start), end, days, rng)
                buffer = io.StringIO()
                frame.to_csv(buffer, header=False, index=False, na_rep="")
                copy.write(buffer.getvalue())
        connection.commit()


@dataclass
class Timing:
    page: str
    case: str
    cold: float
    warm: float


def page_queries(
    engine: Engine, filters: Filters, now: datetime
) -> dict[str, Callable[[], object]]:
    """What each page runs on its first render (``console/app_pages``), and the Spend
    page after switching its stack and ranking to users or end users."""

    def spend() -> None:
        labels = analytics.load_labels(engine)
        analytics.totals(engine, filters)
        analytics.spend_over_time(engine, filters, "model", labels)
        analytics.top_spenders(engine, filters, "tenant", labels)
        analytics.savings_over_time(engine, filters)
        budget.month_forecast(engine, filters, now)
        budget.quota_use(engine, filters, now, labels)

    def spend_by(by: Dimension) -> Callable[[], None]:
        def run() -> None:  # the stack and the ranking switched to ``by``
            labels = analytics.load_labels(engine)
            analytics.spend_over_time(engine, filters, by, labels)
            analytics.top_spenders(engine, filters, by, labels)

        return run

    def latency() -> None:
        analytics.load_labels(engine)
        analytics.latency_over_time(engine, filters)
        analytics.latency_summary(engine, filters)
        analytics.error_rates(engine, filters)
        analytics.refusals(engine, filters)

    def cache() -> None:
        labels = analytics.load_labels(engine)
        analytics.totals(engine, filters)
        analytics.cache_hit_rates(engine, filters, "model", labels)
        analytics.savings_over_time(engine, filters)

    def export() -> None:
        analytics.load_labels(engine)
        period = billing.month_period(month_of(now))
        billing.billing_rows(engine, period, filters.tenant_ids)
        billing.billing_csv(engine, period, filters.tenant_ids)

    return {
        "Spend": spend,
        "Spend by user": spend_by("user"),
        "Spend by end user": spend_by("end_user"),
        "Latency": latency,
        "Cache": cache,
        "Export": export,
    }


def measure(run: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    start = time.perf_counter()
    run()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        warm.append(time.perf_counter() - start)
    return cold, statistics.median(warm)


RENDERED_PAGES = ("spend", "latency", "cache", "export", "conversations", "flagged", "users")


def render_pages(engine: Engine, url: str) -> None:
    """Each page rendered whole, as a signed-in admin sees it first: the Streamlit script
    run by ``AppTest`` (queries, pandas frames, plotly figures), cold and warm."""
    import os

    import streamlit as st
    from streamlit import logger as streamlit_logger
    from streamlit.testing.v1 import AppTest

    from console.auth import SESSION_KEY, SignIn
    from shared import console_users
    from shared.db import transaction

    os.environ["METERGATE_DATABASE_URL"] = url
    streamlit_logger.set_log_level("error")  # AppTest's bare-mode chatter, per page
    name = f"bench-{uuid.uuid4().hex[:6]}"
    with transaction(engine) as session:
        console_users.create_console_user(session, name, "admin", uuid.uuid4().hex)
    app = str(Path(__file__).resolve().parents[2] / "console" / "streamlit_app.py")
    print(f"\n{'page rendered whole (AppTest)':<34} {'cold s':>7} {'warm s':>7}")
    worst = 0.0
    for page in RENDERED_PAGES:
        st.cache_data.clear()
        at = AppTest.from_file(app, default_timeout=120)
        at.session_state[SESSION_KEY] = SignIn(name, "password", time.time())
        at.run()
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            at.switch_page(f"app_pages/{page}.py").run()
            runs.append(time.perf_counter() - started)
            if at.exception:
                raise SystemExit(f"{page}: {at.exception}")
        cold, warm = runs[0], statistics.median(runs[1:])
        worst = max(worst, cold, warm)
        flag = "" if max(cold, warm) < TARGET_SECONDS else "  > target"
        print(f"{page:<34} {cold:7.2f} {warm:7.2f}{flag}")
    print(f"\nslowest page render: {worst:.2f} s (target < {TARGET_SECONDS:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    url = create_pg_database()
    print(f"database {url}")
    engine = make_engine(url)
    try:
        upgrade(url)
        now = datetime.now(UTC)
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        seed_accounts(engine, np.random.default_rng(args.seed))
        started = time.perf_counter()
        copy_records(url, args.records, args.days, now, args.seed)
        print(
            f"generated and copied {args.records:,} records"
            f" in {time.perf_counter() - started:.1f} s"
        )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE request_records"))
        started = time.perf_counter()
        rebuild(engine)
        print(f"rollups rebuilt in {time.perf_counter() - started:.1f} s")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            sizes = []
            for table in ("request_records", *(r.table.name for r in ROLLUPS)):
                if table != "request_records":
                    connection.execute(text(f"VACUUM ANALYZE {table}"))
                rows, size = connection.execute(
                    text(
                        f"SELECT count(*), pg_size_pretty(pg_total_relation_size('{table}'))"
                        f" FROM {table}"
                    )
                ).one()
                sizes.append(f"  {table:<22} {rows:>10,} rows {size:>10}")
        print("\n".join(sizes))

        cases = {
            "last 24 h": Filters(end - timedelta(hours=24), end),
            "last 7 days": Filters(end - timedelta(days=7), end),
            f"last {args.days} days": Filters(end - timedelta(days=args.days), end),
            f"last {args.days} days, 1 tenant": Filters(
                end - timedelta(days=args.days), end, tenant_ids=(3,)
            ),
        }
        timings = []
        for case, filters in cases.items():
            for page, run in page_queries(engine, filters, now).items():
                cold, warm = measure(run)
                timings.append(Timing(page, case, cold, warm))
        print()
        print(f"{'page':<28} {'range':<22} {'cold s':>7} {'warm s':>7}")
        for timing in timings:
            flag = "" if max(timing.cold, timing.warm) < TARGET_SECONDS else "  > target"
            print(
                f"{timing.page:<28} {timing.case:<22} {timing.cold:7.2f} {timing.warm:7.2f}{flag}"
            )
        worst = max(max(t.cold, t.warm) for t in timings)
        print(f"\nslowest page query set: {worst:.2f} s (target < {TARGET_SECONDS:.0f} s)")
        render_pages(engine, url)
    finally:
        engine.dispose()
        if not args.keep:
            drop_pg_database(url)


if __name__ == "__main__":
    main()
