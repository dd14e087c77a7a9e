"""Secrets found in stored prompts and answers, replaced by a marker naming their kind.

``redact`` is applied to the request and response bodies when a call's record is
built, never to what goes upstream or back to the client. What it finds:

- provider keys: OpenAI ``sk-…`` (``sk-proj-…`` included), Anthropic ``sk-ant-…``;
- gateway keys ``mg-…``;
- AWS access key ids ``AKIA…`` / ``ASIA…``;
- bearer tokens (``Bearer <token>``, as in an Authorization header: the token goes,
  the word stays);
- card numbers: 13 to 19 digits starting with 2-6, optionally grouped by spaces or
  dashes, that pass the Luhn check (only candidates are checked).

One compiled pattern scans the text once. Markers hold no quote or backslash, so a
JSON body stays valid JSON after redaction.
"""

from __future__ import annotations

import re
from typing import Final

# Key bodies must hold a digit: real keys always do, hyphenated words ("sk-learn-…") don't.
_KEY_BODY: Final = r"(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{16,}"
# Except the gateway's own keys, whose shape is exact (``shared.keys``: 32 URL-safe base64
# characters), digit or not: about one in 250 has none.
_GATEWAY_KEY_BODY: Final = r"[A-Za-z0-9_\-]{32}(?![A-Za-z0-9_\-])"
# The leading lookahead lets most positions fail on one character test; the branches run
# only where a secret could start. Card numbers start with 2-6 (the issuers' ranges, and
# not a millisecond clock) and open with four digits, as every card layout does.
_PATTERN: Final = re.compile(
    r"(?=[smAB2-6])(?:"
    rf"(?P<anthropic_key>\bsk-ant-{_KEY_BODY})"
    rf"|(?P<openai_key>\bsk-{_KEY_BODY})"
    rf"|(?P<gateway_key>\bmg-(?:{_GATEWAY_KEY_BODY}|{_KEY_BODY}))"
    r"|(?P<aws_access_key>\bA(?:KI|SI)A[0-9A-Z]{16}\b)"
    r"|(?P<bearer>\bBearer[ \t]+)(?P<bearer_token>[A-Za-z0-9\-._~+/]{8,}=*)"
    r"|(?P<card_number>(?<![\d\-])[2-6]\d{3}(?:[ \-]?\d){9,15}(?![\d\-]))"
    r")"
)
_CARD_SEPARATORS: Final = str.maketrans("", "", " -")
# What any match of ``_PATTERN`` holds: a key's prefix, an AWS id's, the bearer word, or
# the first thirteen characters of a card number. A text with none of them (nearly every
# body) is returned after these searches, about a third of the cost of ``_PATTERN``'s
# scan, whose lookahead is tried at every position.
_MARKERS: Final = ("sk-", "mg-", "AKIA", "ASIA", "Bearer")
_CARD_START: Final = re.compile(r"[2-6]\d{3}(?:[ \-]?\d){9}")


def redact(text: str) -> str:
    """``text`` with every secret listed in the module docstring replaced by
    ``[REDACTED:<kind>]``. Pure; never raises."""
    if not any(marker in text for marker in _MARKERS) and _CARD_START.search(text) is None:
        return text
    return _PATTERN.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    kind = match.lastgroup or "secret"
    if kind == "bearer_token":
        return match.group("bearer") + "[REDACTED:bearer_token]"
    if kind == "card_number" and not passes_luhn(match.group().translate(_CARD_SEPARATORS)):
        return match.group()
    return f"[REDACTED:{kind}]"


def passes_luhn(digits: str) -> bool:
    """Whether a string of digits has a valid Luhn check digit (as card numbers do)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0
