"""usage rollup (console dashboards)

Revision ID: 0003
Revises: 0002

Five rollup tables maintained by ``shared.rollup`` as records are written:
``usage_hourly`` (hour x tenant x user x key x model x provider x error code x
refusal reason, with latency histograms), ``usage_daily`` (the same per day and
tenant, without users and keys), ``usage_key_daily`` (per day and key, sums only),
``usage_end_user_daily`` and ``usage_end_user_monthly``.
``shared.db.upgrade`` fills them from the records already logged (with the
live rollup code, against the head schema), so an upgraded deployment's
dashboards show its history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of shared.models' histogram layout as of this revision.
LATENCY_METRICS = ("total", "upstream", "overhead", "ttft")
LATENCY_BUCKETS = 44
MONEY = sa.Numeric(precision=18, scale=8)


def _sums() -> list[sa.Column[object]]:
    counts = (
        "requests",
        "errors",
        "cache_hits",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_hit_tokens",
    )
    money = ("cost_usd", "response_cache_saved_usd", "prompt_cache_saved_usd")
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in counts] + [
        sa.Column(name, MONEY, nullable=False) for name in money
    ]


def _errors_and_latencies() -> list[sa.Column[object]]:
    return [
        sa.Column("error_code", sa.String(length=100), nullable=False),
        sa.Column("refusal_reason", sa.String(length=32), nullable=False),
        *_sums(),
        *(
            sa.Column(f"lat_{metric}_{bucket:02d}", sa.Integer(), nullable=True)
            for metric in LATENCY_METRICS
            for bucket in range(LATENCY_BUCKETS)
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        *_errors_and_latencies(),
        sa.PrimaryKeyConstraint(
            "hour",
            "tenant_id",
            "user_id",
            "key_id",
            "model",
            "provider",
            "error_code",
            "refusal_reason",
            name=op.f("pk_usage_hourly"),
        ),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        *_errors_and_latencies(),
        sa.PrimaryKeyConstraint(
            "day",
            "tenant_id",
            "model",
            "provider",
            "error_code",
            "refusal_reason",
            name=op.f("pk_usage_daily"),
        ),
    )
    op.create_table(
        "usage_key_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(
            "day", "tenant_id", "user_id", "key_id", name=op.f("pk_usage_key_daily")
        ),
    )
    op.create_table(
        "usage_end_user_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("end_user", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(
            "day",
            "tenant_id",
            "user_id",
            "key_id",
            "end_user",
            "model",
            "provider",
            name=op.f("pk_usage_end_user_daily"),
        ),
    )
    op.create_index(
        "ix_usage_end_user_daily_end_user_day", "usage_end_user_daily", ["end_user", "day"]
    )
    op.create_table(
        "usage_end_user_monthly",
        sa.Column("month", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("end_user", sa.String(length=200), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(
            "month",
            "tenant_id",
            "user_id",
            "key_id",
            "end_user",
            name=op.f("pk_usage_end_user_monthly"),
        ),
    )


def downgrade() -> None:
    op.drop_table("usage_end_user_monthly")
    op.drop_index("ix_usage_end_user_daily_end_user_day", "usage_end_user_daily")
    op.drop_table("usage_end_user_daily")
    op.drop_table("usage_key_daily")
    op.drop_table("usage_daily")
    op.drop_table("usage_hourly")
