"""What each body-storage choice keeps of a body (shared.body_storage)."""

from __future__ import annotations

import json

import pytest

from shared.body_storage import stored_body

CHAT = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "card 4111 1111 1111 1111"}]},
        ],
        "max_tokens": 20,
        "stream": False,
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "finds"}}],
    }
)


def test_full_keeps_the_body_with_secrets_redacted() -> None:
    kept = stored_body(CHAT, "full")
    assert kept is not None and "be brief" in kept and "4111" not in kept
    assert "[REDACTED:card_number]" in kept


def test_redacted_keeps_names_numbers_and_structure_but_no_text() -> None:
    kept = stored_body(CHAT, "redacted")
    assert kept is not None
    assert json.loads(kept) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "[REDACTED:text]"},
            {"role": "user", "content": [{"type": "text", "text": "[REDACTED:text]"}]},
        ],
        "max_tokens": 20,
        "stream": False,
        "tools": [
            {"type": "function", "function": {"name": "lookup", "description": "[REDACTED:text]"}}
        ],
    }


@pytest.mark.parametrize(
    ("text", "storage", "kept"),
    [
        ("not json at all", "redacted", "[REDACTED:text]"),
        ('"a json string"', "redacted", '"[REDACTED:text]"'),
        (CHAT, "none", None),
        (CHAT, "unknown", None),
        ("", "full", None),
        (None, "full", None),
    ],
)
def test_edge_cases(text: str | None, storage: str, kept: str | None) -> None:
    assert stored_body(text, storage) == kept
