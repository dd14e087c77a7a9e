from __future__ import annotations

import json
import random

import pytest

from shared.keys import generate_key
from shared.redact import _PATTERN, _replacement, passes_luhn, redact

SECRETS = [
    ("openai_key", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv"),
    ("openai_key", "sk-0123456789abcdefABCDEF0123"),
    ("anthropic_key", "sk-ant-api03-Zx9_yW8-vU7tS6rQ5pO4nM3"),
    ("gateway_key", "mg-Q2w3E4r5T6y7U8i9O0p1A2s3D4f5G6h7"),
    ("gateway_key", "mg--cPGfXesPg_JrFTtwQwErTyUiOpAsDfG"),  # no digit, as ~1 key in 250
    ("aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key", "ASIAY34FZKBOKMUTVV7A"),
    ("card_number", "4111111111111111"),
    ("card_number", "4111 1111 1111 1111"),
    ("card_number", "5500-0000-0000-0004"),
    ("card_number", "378282246310005"),
]


@pytest.mark.parametrize(("kind", "secret"), SECRETS)
def test_redact_replaces_each_secret_kind_with_its_marker(kind: str, secret: str) -> None:
    text = f"here it is: {secret}, keep it safe"
    assert redact(text) == f"here it is: [REDACTED:{kind}], keep it safe"


def test_every_gateway_key_shape_is_redacted() -> None:
    """Whatever characters a generated key draws (digits or none, leading '-' or '_')."""
    for _ in range(5_000):
        secret = generate_key().secret
        assert redact(f"key={secret};") == "key=[REDACTED:gateway_key];", secret


def test_redact_keeps_the_bearer_word_and_drops_the_token() -> None:
    text = "curl -H 'Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9-abc_def' https://x"
    assert redact(text) == "curl -H 'Authorization: Bearer [REDACTED:bearer_token]' https://x"


@pytest.mark.parametrize(
    "text",
    [
        "use sk-learn-and-pandas-together for this",  # a hyphenated word, no digit
        "the task-0123456789012345678 finished",  # "sk-" inside a word
        "order 4111111111111112 failed",  # fails the Luhn check
        "created at 1712345678901 ms",  # a millisecond clock, not a card
        "call +44 20 7946 0958 tomorrow",  # a phone number
        "a bearer of bad news",  # the word without a token
        "AKIA is a prefix, AKIAshort is not a key",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_keeps_a_json_body_valid_json() -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv"}]}
    )
    redacted = redact(body)
    assert json.loads(redacted)["messages"][0]["content"] == "key [REDACTED:openai_key]"


def test_redact_leaves_a_large_clean_body_unchanged() -> None:
    prose = "Summarise the meeting notes from Monday; keep the numbers 2024 and 3.14. " * 14_000
    assert redact(prose) == prose  # ~1 MB, numbers that are not card numbers included


@pytest.mark.parametrize(
    ("digits", "is_valid"),
    [("4111111111111111", True), ("79927398713", True), ("4111111111111112", False)],
)
def test_passes_luhn(digits: str, is_valid: bool) -> None:
    assert passes_luhn(digits) is is_valid


def test_the_quick_checks_never_change_what_is_redacted() -> None:
    """``redact`` returns a text untouched when it holds none of what a secret starts
    with; on texts made of secrets, their parts and near misses, it gives what the full
    scan gives."""
    pieces = [secret for _, secret in SECRETS] + [
        *("sk-", "mg-", "AKIA", "ASIA", "Bearer ", "Bearer\t", "sk-ant-", "-", " ", "_"),
        *("4111", "4111 1111 1111 ", "1111", "41111111111111112", "5500-0000-", "2024"),
        *("\u0664\u0661\u0661\u0661", "\u0661" * 12, "0123456789", "3.14", "word", "\n"),
        *("abcdefghijklmnop", "0123456789ABCDEFGH", "IOSFODNN7EXAMPLE"),
        "4222222222222",  # a 13-digit card, the shortest
        "4111111111\u06611\u0661",  # other scripts' digits are digits too (``\\d``)
    ]
    rng = random.Random(20261201)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert redact(text) == _PATTERN.sub(_replacement, text), text
