"""Prompt-injection screening rules: the maintained defaults, per-tenant rows, compiling.

A rule is a name, a regular expression (matched case-insensitively anywhere in the
prompt text) and an action: ``block`` refuses the call, ``flag`` serves it and flags
its record. The rules in force for a tenant are, by name, the defaults below,
overridden by global rows (``tenant_id`` NULL), overridden by the tenant's own rows;
a disabled row switches the rule of that name off.

Writes (``add_rule``) validate the pattern and announce the change, so every proxy
process recompiles within ``config_poll_seconds``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.accounts import AccountError, announce_change, get_tenant, now_utc
from shared.models import ScreeningRule

log = logging.getLogger(__name__)

ACTIONS = ("block", "flag")
MAX_PATTERN_CHARS = 2000


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as written: by the maintainers (``DEFAULT_RULES``) or in a row."""

    name: str
    pattern: str
    action: str
    tenant_id: int | None = None
    is_enabled: bool = True


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    regex: re.Pattern[str]
    action: str

    @property
    def is_blocking(self) -> bool:
        return self.action == "block"


_ANY = r"(?:all\s+|any\s+|of\s+)*(?:the\s+|your\s+|my\s+|these\s+|those\s+)?"
DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        "ignore_previous_instructions",
        r"\b(?:ignore|forget|disregard|skip|override)\s+" + _ANY + r"(?:previous|prior|above|"
        r"earlier|preceding|former)\s+(?:instructions?|prompts?|rules|directions|context)\b",
        "block",
    ),
    RuleSpec(
        "disregard_system_prompt",
        r"\b(?:ignore|forget|disregard|override|bypass)\s+" + _ANY + r"system\s+"
        r"(?:prompt|message|instructions?)\b",
        "block",
    ),
    RuleSpec(
        "dan_jailbreak",
        r"\byou\s+are\s+(?:now\s+)?DAN\b|\bdo\s+anything\s+now\b",
        "block",
    ),
    RuleSpec(
        "no_restrictions_roleplay",
        r"\bpretend\s+(?:that\s+)?you\s+(?:have\s+no|are\s+(?:not\s+bound\s+by|free\s+of)|"
        r"do\s*n[o']t\s+have)\s+(?:any\s+)?(?:rules|restrictions|guidelines|filters|limits)\b",
        "block",
    ),
    RuleSpec(
        "reveal_system_prompt",
        r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell\s+me)\s+(?:me\s+)?"
        r"(?:your|the)\s+(?:system\s+prompt|(?:initial\s+|hidden\s+|original\s+|secret\s+)?"
        r"instructions)\b",
        "flag",
    ),
    RuleSpec(
        "developer_mode",
        r"\b(?:enable|activate|enter|switch\s+to)\s+(?:the\s+)?developer\s+mode\b",
        "flag",
    ),
    RuleSpec(
        "chat_template_tokens",
        r"<\|im_start\|>|<\|system\|>|<<SYS>>|\[/?INST\]",
        "flag",
    ),
)


def validate_rule(name: str, pattern: str, action: str) -> None:
    """Raise AccountError unless the rule can be compiled and used."""
    if not name.strip() or len(name) > 100:
        raise AccountError("a rule name must be 1 to 100 characters")
    if action not in ACTIONS:
        raise AccountError(f"action must be one of {', '.join(ACTIONS)} (got {action!r})")
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise AccountError(f"a pattern must be 1 to {MAX_PATTERN_CHARS} characters")
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise AccountError(f"invalid regular expression {pattern!r}: {exc}") from exc
    if regex.search(""):
        raise AccountError(f"the pattern {pattern!r} matches empty text, so it matches every call")


def add_rule(
    session: Session, name: str, pattern: str, action: str, tenant_name: str | None = None
) -> ScreeningRule:
    """Add a rule for one tenant (or every tenant). A rule named like a default replaces it."""
    validate_rule(name, pattern, action)
    tenant_id = get_tenant(session, tenant_name).id if tenant_name is not None else None
    existing = session.scalar(
        select(ScreeningRule).where(
            ScreeningRule.name == name,
            ScreeningRule.tenant_id.is_(None)
            if tenant_id is None
            else ScreeningRule.tenant_id == tenant_id,
        )
    )
    if existing is not None:
        scope = f"tenant {tenant_name!r}" if tenant_name else "every tenant"
        raise AccountError(f"a rule named {name!r} already exists for {scope}")
    rule = ScreeningRule(
        tenant_id=tenant_id,
        name=name,
        pattern=pattern,
        action=action,
        is_enabled=True,
        created_at=now_utc(),
    )
    session.add(rule)
    announce_change(session)
    return rule


def list_rules(session: Session) -> list[ScreeningRule]:
    """Every rule row, global ones first (the defaults are ``DEFAULT_RULES``)."""
    return list(
        session.scalars(
            select(ScreeningRule).order_by(
                ScreeningRule.tenant_id.is_not(None), ScreeningRule.tenant_id, ScreeningRule.id
            )
        )
    )


def load_rule_specs(session: Session) -> list[RuleSpec]:
    """Every rule row as a spec, for the proxy's config cache."""
    return [
        RuleSpec(row.name, row.pattern, row.action, row.tenant_id, row.is_enabled)
        for row in session.scalars(select(ScreeningRule).order_by(ScreeningRule.id))
    ]


def rules_for_tenant(specs: Iterable[RuleSpec], tenant_id: int) -> list[RuleSpec]:
    """The rules in force for one tenant: defaults < global rows < the tenant's rows."""
    by_name = {spec.name: spec for spec in DEFAULT_RULES}
    rows = list(specs)
    for scope in (None, tenant_id):
        for spec in rows:
            if spec.tenant_id == scope:
                by_name[spec.name] = spec
    return [spec for spec in by_name.values() if spec.is_enabled]


def compile_rules(specs: Sequence[RuleSpec]) -> tuple[CompiledRule, ...]:
    """Compile specs, blocking rules first; a row that does not compile is skipped (logged)."""
    compiled: list[CompiledRule] = []
    for spec in specs:
        try:
            regex = re.compile(spec.pattern, re.IGNORECASE)
        except re.error:
            log.warning("event=screening_rule_invalid name=%s", spec.name)
            continue
        if spec.action in ACTIONS:
            compiled.append(CompiledRule(spec.name, regex, spec.action))
    compiled.sort(key=lambda rule: not rule.is_blocking)
    return tuple(compiled)
