"""Gateway keys: mg- + at least 128 random bits, stored only as a SHA-256 hash and a prefix."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from shared import accounts
from shared.accounts import AccountError, Limits
from shared.db import transaction
from shared.keys import (
    DISPLAY_PREFIX_CHARS,
    KEY_PREFIX,
    display_prefix,
    generate_key,
    hash_key,
    hashes_match,
    looks_like_key,
)
from shared.models import ApiKey


@pytest.fixture()
def user_email(engine: Engine) -> str:
    label = uuid.uuid4().hex[:8]
    with transaction(engine) as session:
        accounts.create_tenant(session, f"keys-tenant-{label}")
        accounts.create_tier(session, f"keys-tier-{label}", Limits())
        accounts.create_user(
            session, f"keys-{label}@example.com", f"keys-tenant-{label}", f"keys-tier-{label}"
        )
    return f"keys-{label}@example.com"


def test_generated_key_is_mg_prefixed_with_at_least_128_random_bits() -> None:
    new = generate_key()
    assert new.secret.startswith(KEY_PREFIX)
    random_part = new.secret[len(KEY_PREFIX) :]
    decoded = base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))
    assert len(decoded) * 8 >= 128
    assert looks_like_key(new.secret)


def test_generated_keys_never_repeat() -> None:
    secrets = {generate_key().secret for _ in range(2_000)}
    assert len(secrets) == 2_000


def test_key_hash_is_sha256_hex_and_prefix_is_short() -> None:
    new = generate_key()
    assert new.secret_hash == hashlib.sha256(new.secret.encode()).hexdigest()
    assert hash_key(new.secret) == new.secret_hash
    assert new.prefix == display_prefix(new.secret) == new.secret[:DISPLAY_PREFIX_CHARS]
    assert len(new.secret) - len(new.prefix) >= 22  # 128 bits are never on display
    assert hashes_match(new.secret_hash, new.secret)
    assert not hashes_match(new.secret_hash, new.secret + "x")


@pytest.mark.parametrize(
    "value",
    ["", "sk-abc", "mg-", "mg-short", "MG-" + "a" * 32, "mg-" + "a" * 300],
)
def test_values_that_cannot_be_keys_are_recognised(value: str) -> None:
    assert not looks_like_key(value)


def test_stored_key_row_holds_the_hash_and_prefix_but_never_the_secret(
    engine: Engine, user_email: str
) -> None:
    with transaction(engine) as session:
        row, secret = accounts.create_key(
            session, user_email, name="ci", environment="staging", models=["gpt-4o-mini"]
        )
        key_id = row.id
    with engine.connect() as connection:
        stored = connection.execute(
            select(ApiKey.__table__).where(ApiKey.__table__.c.id == key_id)
        ).one()
    values = [str(value) for value in stored]
    random_part = secret[len(KEY_PREFIX) :]
    assert not any(secret in value or random_part in value for value in values)
    assert not any(random_part[-16:] in value for value in values)
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.prefix == secret[:DISPLAY_PREFIX_CHARS]
    assert (stored.environment, stored.name, stored.models) == ("staging", "ci", ["gpt-4o-mini"])


def test_key_expiry_is_set_from_days(engine: Engine, user_email: str) -> None:
    with transaction(engine) as session:
        row, _ = accounts.create_key(session, user_email, expires_in_days=30)
        assert row.expires_at is not None
        expires_at = row.expires_at
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    expected = datetime.now(UTC) + timedelta(days=30)
    assert abs(expires_at - expected) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"environment": "qa"}, "environment must be one of"),
        ({"expires_in_days": 0}, "expires_in_days must be positive"),
    ],
)
def test_invalid_key_options_are_refused(
    engine: Engine, user_email: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(AccountError, match=message), transaction(engine) as session:
        accounts.create_key(session, user_email, **options)  # type: ignore[arg-type]


def test_revoke_by_prefix_or_id_sets_revoked_at_once(engine: Engine, user_email: str) -> None:
    with transaction(engine) as session:
        first, _ = accounts.create_key(session, user_email)
        second, _ = accounts.create_key(session, user_email)
        first_id, second_prefix = first.id, second.prefix
    with transaction(engine) as session:
        assert accounts.revoke_key(session, str(first_id)).revoked_at is not None
        revoked = accounts.revoke_key(session, second_prefix)
        assert revoked.id == second.id and revoked.revoked_at is not None
        again = accounts.revoke_key(session, second_prefix).revoked_at
    assert again == revoked.revoked_at


def test_revoking_an_unknown_key_is_an_account_error(engine: Engine) -> None:
    with pytest.raises(AccountError, match="no key"), transaction(engine) as session:
        accounts.revoke_key(session, "mg-nothere")
