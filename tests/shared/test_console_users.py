"""Console accounts: argon2 passwords, roles that include each other, the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine

from shared import audit, console_users
from shared.accounts import AccountError
from shared.console_users import Actor, PermissionDenied, require_role
from shared.db import transaction

PASSWORD = "a long enough password"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    ("held", "needed", "allowed"),
    [
        ("viewer", "viewer", True),
        ("viewer", "support", False),
        ("viewer", "admin", False),
        ("support", "viewer", True),
        ("support", "support", True),
        ("support", "admin", False),
        ("admin", "viewer", True),
        ("admin", "admin", True),
        ("owner", "viewer", False),
    ],
)
def test_roles_include_the_lesser_ones(held: str, needed: str, allowed: bool) -> None:
    assert console_users.role_includes(held, needed) is allowed
    if allowed:
        require_role(Actor("x", held), needed)
    else:
        with pytest.raises(PermissionDenied, match=f"needs {needed}"):
            require_role(Actor("x", held), needed)


def test_passwords_are_stored_as_argon2_hashes_and_checked(engine: Engine) -> None:
    name = unique("ada")
    with transaction(engine) as session:
        user = console_users.create_console_user(session, name, "admin", PASSWORD)
        assert user.password_hash is not None and user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
    with transaction(engine) as session:
        assert console_users.authenticate(session, name, PASSWORD) == Actor(name, "admin")
        assert console_users.authenticate(session, f"  {name} ", PASSWORD) == Actor(name, "admin")
        assert console_users.authenticate(session, name, PASSWORD + "!") is None
        assert console_users.authenticate(session, unique("nobody"), PASSWORD) is None


def test_an_outdated_hash_is_upgraded_at_sign_in(engine: Engine) -> None:
    name = unique("old")
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with transaction(engine) as session:
        user = console_users.create_console_user(session, name, "viewer", PASSWORD)
        user.password_hash = weak
    with transaction(engine) as session:
        assert console_users.authenticate(session, name, PASSWORD) is not None
    with transaction(engine) as session:
        stored = console_users.find_console_user(session, name)
        assert stored is not None and stored.password_hash != weak


def test_disabled_and_password_less_accounts_cannot_sign_in(engine: Engine) -> None:
    disabled, sso = unique("gone"), unique("sso")
    with transaction(engine) as session:
        console_users.create_console_user(session, disabled, "admin", PASSWORD).is_disabled = True
        console_users.create_console_user(session, sso, "admin")
    with transaction(engine) as session:
        assert console_users.authenticate(session, disabled, PASSWORD) is None
        assert console_users.actor_for(session, disabled) is None
        assert console_users.authenticate(session, sso, PASSWORD) is None
        assert console_users.actor_for(session, sso) == Actor(sso, "admin")


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("  ", "admin", PASSWORD, "needs a name"),
        ("x", "owner", PASSWORD, "role must be one of viewer, support, admin"),
        ("x", "admin", "short", "at least 12 characters"),
    ],
)
def test_account_creation_refusals(
    engine: Engine, name: str, role: str, password: str, message: str
) -> None:
    with pytest.raises(AccountError, match=message), transaction(engine) as session:
        console_users.create_console_user(session, name, role, password)


def test_a_name_is_taken_once(engine: Engine) -> None:
    name = unique("twice")
    with transaction(engine) as session:
        console_users.create_console_user(session, name, "viewer", PASSWORD)
    with pytest.raises(AccountError, match="already exists"), transaction(engine) as session:
        console_users.create_console_user(session, name, "admin", PASSWORD)


def test_audit_entries_are_json_safe_and_filterable(engine: Engine) -> None:
    actor = Actor(unique("auditor"), "admin")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with transaction(engine) as session:
        audit.record(
            session,
            actor,
            "tier.update",
            "tier",
            "pro",
            before={"monthly_usd": Decimal("1.50"), "models": None},
            after={"monthly_usd": Decimal("2"), "models": ("a", "b"), "expires_at": at},
        )
        audit.record(session, actor.name, "key.revoke", "key", 7)
    with transaction(engine) as session:
        mine = audit.entries(session, audit.AuditFilter(actor=actor.name))
        assert [e.action for e in mine] == ["key.revoke", "tier.update"]
        assert mine[0].target_id == "7"
        update = mine[1]
        assert update.before == {"monthly_usd": "1.50", "models": None}
        assert update.after == {
            "monthly_usd": "2",
            "models": ["a", "b"],
            "expires_at": "2026-01-02T03:04:05+00:00",
        }
        assert audit.changed_fields(update.before, update.after) == [
            "monthly_usd",
            "models",
            "expires_at",
        ]
        tiers_only = audit.AuditFilter(actor=actor.name, action_prefix="tier.")
        assert [e.action for e in audit.entries(session, tiers_only)] == ["tier.update"]
        future = audit.AuditFilter(actor=actor.name, since=datetime.now(UTC) + timedelta(days=1))
        assert audit.entries(session, future) == []
        assert actor.name in audit.actors(session)
