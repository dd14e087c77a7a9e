"""Gateway keys: ``mg-`` + 192 bits of randomness, stored only as SHA-256 + prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "mg-"
DISPLAY_PREFIX_CHARS = 11  # "mg-" + 8 characters: enough to tell keys apart in a list
ENVIRONMENTS = ("dev", "staging", "prod")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: ``secret`` is shown once and never stored."""

    secret: str
    secret_hash: str
    prefix: str


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(24)  # 24 bytes = 192 bits
    return NewKey(secret=secret, secret_hash=hash_key(secret), prefix=display_prefix(secret))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:DISPLAY_PREFIX_CHARS]


def hashes_match(stored_hash: str, secret: str) -> bool:
    """Constant-time comparison of a stored hash with a presented secret."""
    return hmac.compare_digest(stored_hash, hash_key(secret))


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and 20 <= len(value) <= 200
