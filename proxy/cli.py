"""The ``metergate`` command line. Every command has ``--help``; list commands take ``--json``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import accounts, admin, audit, console_users, screening
from shared.accounts import MODERATION_CHOICES, AccountError, Limits, TierPolicy
from shared.body_storage import BODY_STORAGE_CHOICES
from shared.console_users import Actor
from shared.db import engine_for, transaction, upgrade
from shared.keys import ENVIRONMENTS
from shared.models import ApiKey, ModelPrice, Tenant, Tier, User
from shared.settings import Settings

CLI_ACTOR = Actor("cli", "admin")  # audit entries of shell commands


@contextmanager
def _session() -> Iterator[Session]:
    engine = engine_for(Settings())
    try:
        with transaction(engine) as session:
            yield session
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


class DecimalType(click.ParamType[Decimal]):
    name = "decimal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)


DECIMAL = DecimalType()


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _emit(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        click.echo(json.dumps(list(rows), default=str, indent=2))
        return
    widths = {c: max([len(c)] + [len(_cell(r.get(c))) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@click.group()
@click.version_option(package_name="metergate")
def main() -> None:
    """metergate: a self-hosted gateway for paid LLM APIs."""
    logging.basicConfig(
        level=Settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for chatty in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


# -- db ---------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations (SQLite or PostgreSQL) and seed the model catalogue."""
    settings = Settings()
    upgrade(settings.effective_database_url)
    click.echo("database is up to date", err=True)


# -- tenants ----------------------------------------------------------------------------


@main.group()
def tenant() -> None:
    """Tenants (organisations)."""


@tenant.command("create")
@click.argument("name")
@click.option("--monthly-usd", type=DECIMAL, help="Monthly USD cap for the whole tenant.")
def tenant_create(name: str, monthly_usd: Decimal | None) -> None:
    """Create a tenant."""
    with _session() as session:
        row = accounts.create_tenant(session, name, monthly_usd)
        click.echo(f"created tenant {row.name} (id {row.id})", err=True)


@tenant.command("update")
@click.argument("name")
@click.option(
    "--body-storage",
    type=click.Choice(BODY_STORAGE_CHOICES),
    required=True,
    help="Keep request and response bodies in full (secrets redacted), redacted (the shape "
    "without the text) or none.",
)
def tenant_update(name: str, body_storage: str) -> None:
    """Change how a tenant's bodies are kept (applies to calls from now on)."""
    with _session() as session:
        admin.set_tenant_body_storage(session, CLI_ACTOR, name, body_storage)
        click.echo(f"tenant {name}: bodies kept {body_storage}", err=True)


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tenant_list(as_json: bool) -> None:
    """List tenants."""
    with _session() as session:
        rows = [
            {
                "id": t.id,
                "name": t.name,
                "monthly_usd": t.monthly_usd,
                "body_storage": t.body_storage,
                "created_at": t.created_at,
            }
            for t in session.scalars(select(Tenant).order_by(Tenant.id))
        ]
    _emit(rows, as_json, ("id", "name", "monthly_usd", "body_storage"))


# -- tiers ------------------------------------------------------------------------------

LIMIT_COLUMNS = ("rpm", "tpm", "monthly_tokens", "monthly_usd", "max_tokens", "cache_ttl_seconds")


def tier_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute."),
        click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute."),
        click.option("--monthly-tokens", type=click.IntRange(min=0), help="Monthly token quota."),
        click.option("--monthly-usd", type=DECIMAL, help="Monthly USD budget per user."),
        click.option("--max-tokens", type=click.IntRange(min=1), help="max_tokens ceiling."),
        click.option("--cache-ttl", type=click.IntRange(min=0), help="Cache TTL in seconds."),
        click.option("--models", help="Comma-separated allowed models (default: all)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _limits(**values: Any) -> Limits:
    return Limits(
        rpm=values["rpm"],
        tpm=values["tpm"],
        monthly_tokens=values["monthly_tokens"],
        monthly_usd=values["monthly_usd"],
        max_tokens=values["max_tokens"],
        cache_ttl_seconds=values["cache_ttl"],
        models=_csv(values["models"]),
    )


def tier_policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--max-prompt-tokens",
            type=click.IntRange(min=1),
            help="Refuse prompts estimated above this many tokens.",
        ),
        click.option(
            "--moderation",
            type=click.Choice(MODERATION_CHOICES),
            help="Check prompts with OpenAI's moderation endpoint: flag or block; off.",
        ),
        click.option(
            "--prompt-cache/--no-prompt-cache",
            "is_prompt_cache_marked",
            default=None,
            help="Mark long, stable system prompts for Anthropic's prompt cache.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _policy(**values: Any) -> TierPolicy:
    return TierPolicy(
        max_prompt_tokens=values["max_prompt_tokens"],
        moderation=values["moderation"],
        is_prompt_cache_marked=values["is_prompt_cache_marked"],
    )


def _tier_row(tier: Tier) -> dict[str, Any]:
    row: dict[str, Any] = {"id": tier.id, "name": tier.name}
    row.update({column: getattr(tier, column) for column in LIMIT_COLUMNS})
    row["models"] = tier.models
    row["max_prompt_tokens"] = tier.max_prompt_tokens
    row["moderation"] = tier.moderation_action or "off"
    row["prompt_cache"] = tier.is_prompt_cache_marked
    return row


@main.group()
def tier() -> None:
    """Tiers: the default limits of their users."""


@tier.command("create")
@click.argument("name")
@tier_options
@tier_policy_options
def tier_create(name: str, **values: Any) -> None:
    """Create a tier. Unset limits are unlimited."""
    with _session() as session:
        row = accounts.create_tier(session, name, _limits(**values), _policy(**values))
        click.echo(f"created tier {row.name} (id {row.id})", err=True)


@tier.command("update")
@click.argument("name")
@tier_options
@tier_policy_options
def tier_update(name: str, **values: Any) -> None:
    """Change some of a tier's limits; the others stay as they are."""
    with _session() as session:
        row = accounts.update_tier(session, name, _limits(**values), _policy(**values))
        click.echo(f"updated tier {row.name}", err=True)


@tier.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tier_list(as_json: bool) -> None:
    """List tiers and their limits."""
    with _session() as session:
        rows = [_tier_row(t) for t in session.scalars(select(Tier).order_by(Tier.id))]
    _emit(rows, as_json, ("id", "name", *LIMIT_COLUMNS, "models", "moderation"))


# -- users ------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Users: people or apps within a tenant."""


@user.command("create")
@click.argument("email")
@click.option("--tenant", "tenant_name", required=True, help="Tenant name.")
@click.option("--tier", "tier_name", required=True, help="Tier name.")
def user_create(email: str, tenant_name: str, tier_name: str) -> None:
    """Create a user."""
    with _session() as session:
        row = accounts.create_user(session, email, tenant_name, tier_name)
        click.echo(f"created user {row.email} (id {row.id})", err=True)


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_list(as_json: bool) -> None:
    """List users."""
    with _session() as session:
        rows = [
            {"id": u.id, "email": u.email, "tenant": u.tenant.name, "tier": u.tier.name}
            for u in session.scalars(select(User).order_by(User.id))
        ]
    _emit(rows, as_json, ("id", "email", "tenant", "tier"))


# -- console users ----------------------------------------------------------------------


@main.group("console-user")
def console_user() -> None:
    """People who sign in to the console (viewer, support, admin)."""


@console_user.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(console_users.ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--oidc-only", is_flag=True, help="No password: signs in through OIDC only.")
def console_user_create(name: str, role: str, password_stdin: bool, oidc_only: bool) -> None:
    """Create a console account (asks for the password unless told otherwise)."""
    if password_stdin and oidc_only:
        raise click.UsageError("--password-stdin and --oidc-only exclude each other")
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not oidc_only:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _session() as session:
        row = console_users.create_console_user(session, name, role, password)
        audit.record(
            session,
            "cli",
            "console_user.create",
            "console_user",
            row.name,
            after={"name": row.name, "role": row.role, "has_password": bool(password)},
        )
        click.echo(f"created console user {row.name} ({row.role})", err=True)


@console_user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def console_user_list(as_json: bool) -> None:
    """List console accounts (never their password hashes)."""
    with _session() as session:
        rows = [
            {
                "name": u.name,
                "role": u.role,
                "password": u.password_hash is not None,
                "disabled": u.is_disabled,
            }
            for u in console_users.list_console_users(session)
        ]
    _emit(rows, as_json, ("name", "role", "password", "disabled"))


@console_user.command("disable")
@click.argument("name")
def console_user_disable(name: str) -> None:
    """Stop an account from signing in; its open console sessions end at their next click."""
    with _session() as session:
        row = console_users.find_console_user(session, name)
        if row is None:
            raise AccountError(f"no console user named {name!r}")
        was_disabled = row.is_disabled
        row.is_disabled = True
        audit.record(
            session,
            "cli",
            "console_user.disable",
            "console_user",
            name,
            before={"disabled": was_disabled},
            after={"disabled": True},
        )
        click.echo(f"disabled console user {name}", err=True)


# -- keys -------------------------------------------------------------------------------


@main.group()
def key() -> None:
    """Gateway keys (mg-…)."""


@key.command("create")
@click.option("--user", "user_email", required=True, help="Owner's email.")
@click.option("--name", default="", help="A label for the key.")
@click.option("--env", "environment", type=click.Choice(ENVIRONMENTS), default="prod")
@click.option("--models", help="Comma-separated allowed models (default: the tier's).")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire after N days.")
def key_create(
    user_email: str,
    name: str,
    environment: str,
    models: str | None,
    expires_in_days: int | None,
) -> None:
    """Create a key. Prints only the secret on stdout; it is not shown again."""
    with _session() as session:
        row, secret = accounts.create_key(
            session,
            user_email,
            name=name,
            environment=environment,
            models=_csv(models),
            expires_in_days=expires_in_days,
        )
        click.echo(f"created key {row.prefix}… (id {row.id}); store it now", err=True)
    click.echo(secret)


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def key_list(as_json: bool) -> None:
    """List keys (prefixes only; secrets are never stored)."""
    with _session() as session:
        rows = [
            {
                "id": k.id,
                "prefix": k.prefix,
                "name": k.name,
                "user": k.user.email,
                "env": k.environment,
                "models": k.models,
                "expires_at": k.expires_at,
                "revoked_at": k.revoked_at,
                "created_at": k.created_at,
            }
            for k in session.scalars(select(ApiKey).order_by(ApiKey.id))
        ]
    _emit(rows, as_json, ("id", "prefix", "name", "user", "env", "models", "revoked_at"))


@key.command("revoke")
@click.argument("id_or_prefix")
def key_revoke(id_or_prefix: str) -> None:
    """Revoke a key by id or display prefix. Every proxy process refuses it within seconds."""
    with _session() as session:
        row = accounts.revoke_key(session, id_or_prefix)
        click.echo(f"revoked key {row.prefix}… (id {row.id})", err=True)


# -- screening --------------------------------------------------------------------------


@main.group()
def screen() -> None:
    """Prompt-screening rules: the maintained defaults and your own."""


@screen.command("add")
@click.argument("name")
@click.option("--pattern", required=True, help="Regular expression (case-insensitive).")
@click.option("--action", type=click.Choice(screening.ACTIONS), required=True)
@click.option("--tenant", "tenant_name", help="Only for this tenant (default: every tenant).")
def screen_add(name: str, pattern: str, action: str, tenant_name: str | None) -> None:
    """Add a rule. Named like a default rule, it replaces that rule. Live within seconds."""
    with _session() as session:
        row = screening.add_rule(session, name, pattern, action, tenant_name)
        click.echo(f"added screening rule {row.name} (id {row.id})", err=True)


@screen.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def screen_list(as_json: bool) -> None:
    """List the default rules and the added ones."""
    rows: list[dict[str, Any]] = [
        {"name": r.name, "scope": "default", "action": r.action, "pattern": r.pattern}
        for r in screening.DEFAULT_RULES
    ]
    with _session() as session:
        tenant_names = {row.id: row.name for row in session.execute(select(Tenant.id, Tenant.name))}
        rows += [
            {
                "name": r.name,
                "scope": tenant_names.get(r.tenant_id, "?") if r.tenant_id else "global",
                "action": r.action if r.is_enabled else "off",
                "pattern": r.pattern,
            }
            for r in screening.list_rules(session)
        ]
    _emit(rows, as_json, ("name", "scope", "action", "pattern"))


# -- models -----------------------------------------------------------------------------


@main.group()
def model() -> None:
    """The model catalogue and its prices (USD per 1M tokens)."""


@model.command("add")
@click.argument("name")
@click.option("--provider", type=click.Choice(["openai", "anthropic"]), required=True)
@click.option("--upstream-model", help="The provider's name for it (default: NAME).")
@click.option("--input-per-mtok", type=DECIMAL, required=True)
@click.option("--output-per-mtok", type=DECIMAL, required=True)
@click.option("--cached-input-per-mtok", type=DECIMAL, help="Cache-read price (default: input).")
@click.option("--cache-write-per-mtok", type=DECIMAL, help="Cache-write price (default: input).")
@click.option(
    "--fallbacks",
    help="Comma-separated models (either provider) tried in order when this one keeps "
    "failing; '' clears the chain (default: unchanged).",
)
def model_add(
    name: str,
    provider: str,
    upstream_model: str | None,
    fallbacks: str | None,
    **prices: Decimal,
) -> None:
    """Add a model, or change the prices (and fallbacks) of one."""
    with _session() as session:
        accounts.upsert_model(
            session,
            name,
            provider=provider,
            upstream_model=upstream_model,
            fallbacks=_csv(fallbacks),
            **prices,
        )
        click.echo(f"saved model {name}", err=True)


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_list(as_json: bool) -> None:
    """List the catalogue."""
    columns = (
        "name",
        "provider",
        "upstream_model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "output_per_mtok",
        "fallbacks",
    )
    with _session() as session:
        rows = [
            {c: getattr(m, c) for c in columns}
            for m in session.scalars(
                select(ModelPrice).order_by(ModelPrice.provider, ModelPrice.name)
            )
        ]
    _emit(rows, as_json, columns)


# -- limits on users and keys, caps, usage -------------------------------------------------


@user.command("limit")
@click.argument("email")
@tier_options
def user_limit(email: str, **values: Any) -> None:
    """Override some of a user's limits (over its tier's)."""
    with _session() as session:
        row = accounts.set_user_limits(session, email, _limits(**values))
        click.echo(f"updated limits of user {row.email}", err=True)


@key.command("limit")
@click.argument("id_or_prefix")
@tier_options
@click.option("--end-user-tier", help="Tier whose limits apply to each end user of the key.")
def key_limit(id_or_prefix: str, end_user_tier: str | None, **values: Any) -> None:
    """Limit one key within its user's allowance, and (optionally) each of its end users."""
    with _session() as session:
        row = accounts.set_key_limits(
            session, id_or_prefix, _limits(**values), end_user_tier=end_user_tier
        )
        click.echo(f"updated limits of key {row.prefix}… (id {row.id})", err=True)


@main.group()
def cap() -> None:
    """Monthly USD caps: per tenant, and for the whole deployment."""


@cap.command("set")
@click.option("--global-monthly-usd", type=DECIMAL, help="Cap for the whole deployment.")
@click.option("--tenant", "tenant_name", help="Tenant whose cap to set (with --monthly-usd).")
@click.option("--monthly-usd", type=DECIMAL, help="The tenant's cap.")
@click.option("--clear", is_flag=True, help="Remove the cap named (global or --tenant).")
def cap_set(
    global_monthly_usd: Decimal | None,
    tenant_name: str | None,
    monthly_usd: Decimal | None,
    clear: bool,
) -> None:
    """Set a cap; every proxy process applies it within seconds."""
    if tenant_name is None and global_monthly_usd is None and not clear:
        raise click.UsageError("give --global-monthly-usd X, or --tenant NAME --monthly-usd X")
    if tenant_name is not None and monthly_usd is None and not clear:
        raise click.UsageError("--tenant needs --monthly-usd X (or --clear)")
    with _session() as session:
        if tenant_name is not None:
            accounts.set_tenant_monthly_usd(session, tenant_name, None if clear else monthly_usd)
            click.echo(f"tenant {tenant_name}: monthly cap {_cap(monthly_usd, clear)}", err=True)
        if global_monthly_usd is not None or (clear and tenant_name is None):
            accounts.set_global_monthly_usd(session, None if clear else global_monthly_usd)
            click.echo(f"global monthly cap {_cap(global_monthly_usd, clear)}", err=True)


def _cap(value: Decimal | None, clear: bool) -> str:
    return "removed" if clear or value is None else f"set to ${value}"


@cap.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cap_show(as_json: bool) -> None:
    """Show the global cap and every tenant's."""
    with _session() as session:
        rows = [{"scope": "global", "monthly_usd": accounts.get_global_monthly_usd(session)}]
        rows += [
            {"scope": f"tenant {t.name}", "monthly_usd": t.monthly_usd}
            for t in session.scalars(select(Tenant).order_by(Tenant.id))
        ]
    _emit(rows, as_json, ("scope", "monthly_usd"))


@main.group()
def usage() -> None:
    """Monthly usage counters (quotas and caps)."""


@usage.command("rebuild")
@click.option("--month", help="YYYY-MM (default: this month, UTC).")
def usage_rebuild(month: str | None) -> None:
    """Recompute the month's quota counters in Redis from the SQL request log."""
    from redis import Redis

    from proxy.config_cache import ConfigCache
    from proxy.quota import Quotas
    from proxy.quota_store import RedisQuotaStore

    settings = Settings()
    if not settings.redis_url:
        raise click.ClickException(
            "no METERGATE_REDIS_URL: in the embedded mode the proxy keeps its counters in "
            "process and rebuilds them from the log itself when it starts"
        )
    engine = engine_for(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        quotas = Quotas(RedisQuotaStore(redis), engine, ConfigCache(engine))
        result = quotas.rebuild(month)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from exc
    finally:
        redis.close()
        engine.dispose()
    click.echo(
        f"rebuilt {result.month}: {len(result.users)} users, {len(result.keys)} keys, "
        f"{len(result.end_users)} end users, {len(result.tenants)} tenants; "
        f"{result.total.tokens} tokens, ${result.total.usd} in total",
        err=True,
    )


@usage.command("export")
@click.option("--month", help="YYYY-MM (default: last month, UTC).")
@click.option("--start", "start_at", help="Period start, ISO 8601 on the hour (UTC if no zone).")
@click.option("--end", "end_at", help="Period end (exclusive), like --start.")
@click.option(
    "--by",
    type=click.Choice(["tenant", "user", "key", "end_user"]),
    default="tenant",
    show_default=True,
    help="One row (or one customer of meter events) per this.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv: a row per customer; json: meter events for a metered-billing system.",
)
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here, not stdout.")
def usage_export(
    month: str | None,
    start_at: str | None,
    end_at: str | None,
    by: str,
    output_format: str,
    tenants: tuple[str, ...],
    output: str | None,
) -> None:
    """Usage and cost per tenant, user, key or end user for a billing period, as CSV or
    as JSON meter events (deduplicable: the same period gives the same identifiers)."""
    from shared.billing import BillingPeriod, month_period
    from shared.usage import month_of
    from shared.usage_export import meter_events, tenant_ids_named, usage_csv, usage_rows

    try:
        if start_at or end_at:
            if month or not (start_at and end_at):
                raise click.UsageError("give --month, or both --start and --end")
            period = BillingPeriod(_utc(start_at), _utc(end_at))
        else:
            period = month_period(month or month_of(datetime.now(UTC) - _one_month()))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month / --start / --end") from exc
    engine = engine_for(Settings())
    try:
        tenant_ids = tenant_ids_named(engine, tenants)
        rows = usage_rows(engine, period, by, tenant_ids)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    if output_format == "csv":
        text = usage_csv(rows, period)
    else:
        text = json.dumps(meter_events(rows, period), indent=2) + "\n"
    if output:
        with open(output, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        click.echo(f"wrote {len(rows)} {by} rows to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _utc(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _one_month() -> timedelta:
    """Far enough back from now to land in last month (from any day of this one)."""
    return timedelta(days=datetime.now(UTC).day)


# -- alerts and retention (the background job) -----------------------------------------


@main.group()
def alerts() -> None:
    """Budget and spend-spike alerts to webhooks (METERGATE_ALERT_WEBHOOK_URLS)."""


@alerts.command("run")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--exit-with-parent", is_flag=True, hidden=True)
def alerts_run(once: bool, exit_with_parent: bool) -> None:
    """Run the background job: alerts every METERGATE_ALERT_INTERVAL_SECONDS, and every
    hour the partitions ahead and retention. Safe to run on several hosts at once."""
    import signal

    import httpx

    from shared.background import BackgroundJob

    settings = Settings()
    engine = engine_for(settings)
    job = BackgroundJob(engine, settings)
    try:
        if once:
            with httpx.Client() as client:
                run = job.run_once(client)
            click.echo(
                f"{run.alerts} alerts in force, {run.claimed} new, "
                f"{len(run.report.delivered)} delivered, {len(run.report.failed)} failed",
                err=True,
            )
            return
        signal.signal(signal.SIGTERM, lambda *_: job.stop())
        try:
            job.run_forever(parent_pid=os.getppid() if exit_with_parent else None)
        except KeyboardInterrupt:
            job.stop()
    finally:
        engine.dispose()


@main.group()
def retention() -> None:
    """Deleting old bodies and records (METERGATE_RETENTION_*_DAYS)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
def retention_run(dry_run: bool) -> None:
    """Apply retention now (the background job does it every hour)."""
    from datetime import UTC, datetime

    from shared.partitions import ensure_partitions
    from shared.retention import apply_retention

    settings = Settings()
    if settings.retention_bodies_days is None and settings.retention_records_days is None:
        raise click.ClickException(
            "nothing to do: set METERGATE_RETENTION_BODIES_DAYS and/or "
            "METERGATE_RETENTION_RECORDS_DAYS (unset keeps everything)"
        )
    engine = engine_for(settings)
    try:
        now = datetime.now(UTC)
        if not dry_run:
            ensure_partitions(engine, now)
        report = apply_retention(
            engine,
            now,
            bodies_days=settings.retention_bodies_days,
            records_days=settings.retention_records_days,
            batch_size=settings.retention_batch_size,
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {report.records_deleted} records (created before {report.records_cut_off}), "
        f"{report.bodies_deleted} bodies (before {report.bodies_cut_off}), "
        f"{report.flags_deleted} flags, {report.feedback_deleted} feedback; "
        f"partitions {'to drop' if dry_run else 'dropped'}: "
        f"{', '.join(report.partitions_dropped) or 'none'}",
        err=True,
    )


def _background_job_wanted(settings: Settings) -> bool:
    return bool(
        settings.alert_webhook_urls
        or settings.retention_bodies_days
        or settings.retention_records_days
        or settings.effective_database_url.startswith("postgresql")
    )


# -- servers ----------------------------------------------------------------------------


@main.group()
def serve() -> None:
    """Run the proxy or the console."""


@serve.command("proxy")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--worker-class",
    type=click.Choice(["gevent", "gthread", "sync"]),
    default="gevent",
    show_default=True,
    help="gunicorn worker model: gevent holds many slow streams at once (see README).",
)
@click.option(
    "--threads",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads per worker, for --worker-class gthread.",
)
def serve_proxy(host: str, port: int, workers: int, worker_class: str, threads: int) -> None:
    """Serve the proxy with gunicorn (migrates the database first).

    Without METERGATE_REDIS_URL, limits, quotas and the cache live in process
    memory, so the proxy runs one worker to keep them exact.
    """
    from proxy.server import run_gunicorn

    settings = Settings()
    if settings.is_embedded and workers > 1:
        click.echo(
            "no METERGATE_REDIS_URL: running 1 worker so in-process limits stay exact", err=True
        )
        workers = 1
    upgrade(settings.effective_database_url)
    # One background job per host beside the workers (alerts, partitions, retention).
    background = (
        subprocess.Popen([sys.executable, "-m", "proxy.cli", "alerts", "run", "--exit-with-parent"])
        if _background_job_wanted(settings)
        else None
    )
    try:
        run_gunicorn(
            host=host, port=port, workers=workers, worker_class=worker_class, threads=threads
        )
    finally:
        if background is not None:
            background.terminate()
            background.wait(30)


@serve.command("console")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8501, show_default=True, type=int)
def serve_console(host: str, port: int) -> None:
    """Serve the Streamlit console."""
    from proxy.server import run_console

    run_console(host=host, port=port)


@main.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
@click.option("--token-delay-ms", default=0.0, show_default=True, type=float)
def simulator(host: str, port: int, latency_ms: float, token_delay_ms: float) -> None:
    """Run the simulated OpenAI + Anthropic upstream."""
    from proxy.simulator import SimulatorConfig, run

    run(host, port, SimulatorConfig(latency_ms=latency_ms, token_delay_ms=token_delay_ms))


@main.command("demo")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--requests", "request_count", default=300, show_default=True, type=int)
@click.option("--console-port", default=8501, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="Exit after sending the traffic.")
def demo(port: int, request_count: int, console_port: int, no_serve: bool) -> None:
    """Embedded demo: seed accounts, send traffic through the proxy, keep serving it and
    the console."""
    from proxy.demo import run_demo

    run_demo(
        port=port,
        request_count=request_count,
        keep_serving=not no_serve,
        console_port=console_port,
    )


if __name__ == "__main__":
    main()
