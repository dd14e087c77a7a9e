"""People who sign in to the console: accounts, argon2 passwords and roles.

Roles are ordered, each one including the ones before it:

- ``viewer``: the dashboards (spend, latency, cache, export);
- ``support``: + conversations, flags and replay;
- ``admin``: + tiers, overrides, caps, keys, prices, users, the audit log.

Every console write takes the acting ``Actor`` and calls ``require_role`` before it
changes anything, so a role is enforced on the action itself, not only by hiding a
page. An account without a password hash signs in only through OIDC.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.accounts import AccountError, now_utc
from shared.models import ConsoleUser

ROLES = ("viewer", "support", "admin")
MIN_PASSWORD_CHARS = 12

_hasher = PasswordHasher()


class PermissionDenied(PermissionError):
    """The actor's role does not allow this action."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting in the console: a console user's name and role."""

    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this actor's role includes ``role``."""
        return role_includes(self.role, role)


def role_includes(held: str, needed: str) -> bool:
    """Whether the role ``held`` includes ``needed`` (admin ⊇ support ⊇ viewer)."""
    if needed not in ROLES:
        raise ValueError(f"unknown role {needed!r}")
    return held in ROLES and ROLES.index(held) >= ROLES.index(needed)


def require_role(actor: Actor, role: str) -> None:
    """Raise ``PermissionDenied`` unless ``actor`` holds ``role`` (or a higher one)."""
    if not actor.can(role):
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not do this: it needs {role}")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown: a wrong name costs what a wrong password does."""
    return _hasher.hash("metergate-no-such-console-user")


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


def create_console_user(
    session: Session, name: str, role: str, password: str | None = None
) -> ConsoleUser:
    """Create a console account; without a password it can sign in only through OIDC."""
    name = name.strip()
    if not name:
        raise AccountError("a console user needs a name")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if session.scalar(select(ConsoleUser).where(ConsoleUser.name == name)) is not None:
        raise AccountError(f"console user {name!r} already exists")
    if password is not None:
        check_password_strength(password)
    user = ConsoleUser(
        name=name,
        role=role,
        password_hash=hash_password(password) if password is not None else None,
        is_disabled=False,
        created_at=now_utc(),
    )
    session.add(user)
    session.flush()
    return user


def find_console_user(session: Session, name: str) -> ConsoleUser | None:
    return session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))


def authenticate(session: Session, name: str, password: str) -> Actor | None:
    """The actor for a name and password, or None (unknown, disabled, no password, wrong).

    Upgrades the stored hash in this transaction when argon2's parameters changed.
    """
    user = find_console_user(session, name.strip())
    stored = user.password_hash if user is not None else None
    try:
        _hasher.verify(stored or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or stored is None or user.is_disabled:
        return None
    if _hasher.check_needs_rehash(stored):
        user.password_hash = hash_password(password)
    return Actor(user.name, user.role)


def actor_for(session: Session, name: str) -> Actor | None:
    """The current actor for a signed-in name (role as stored now), or None if disabled/gone."""
    user = find_console_user(session, name)
    if user is None or user.is_disabled:
        return None
    return Actor(user.name, user.role)


def list_console_users(session: Session) -> list[ConsoleUser]:
    return list(session.scalars(select(ConsoleUser).order_by(ConsoleUser.name)))
