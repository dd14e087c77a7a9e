"""Deterministic text and the simulator's tokenizer.

Tokenizer contract: a token is one match of `\\w+|[^\\w\\s]` (a run of word characters or
one punctuation character). `split_pieces` cuts a text into pieces of exactly one token
each (leading whitespace kept), so `"".join(split_pieces(t)) == t` for any text without
trailing whitespace, and truncating to N pieces gives a text of exactly N tokens. That is
what keeps `completion_tokens` equal to the tokens of the text actually returned, for
streamed and non-streamed answers alike.

Generated text is a pure function of a digest (see `digest_of`): the same request content
and seed always give the same words.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Final

import orjson

TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
PIECE_RE: Final = re.compile(r"\s*(?:\w+|[^\w\s])")

MIN_TEXT_TOKENS: Final = 8
MAX_TEXT_TOKENS: Final = 60

VOCABULARY: Final[tuple[str, ...]] = tuple(
    """
    the of and to in is that for it as with was on be by this are or from at which
    an not have has but all can more one will about their there when so some what
    time people year way day thing world life hand part child eye place work week
    case point number group problem fact system model token request answer gateway
    meter quota budget limit price cost cache proxy stream record key account team
    project service server client network latency signal value result window batch
    simple quick careful steady bright quiet early late large small green blue red
    golden silver gentle clear simple honest modern ancient local global rapid
    river mountain forest ocean garden city village bridge road harbor island valley
    morning evening winter summer autumn spring weather cloud rain wind light shadow
    make take give find tell ask seem feel try leave call keep start show hear play
    run move live believe bring happen write provide sit stand lose pay meet include
    continue set learn change lead understand watch follow stop create speak read
    allow add spend grow open walk offer remember love consider appear buy wait serve
    send expect build stay fall reach remain suggest raise pass report decide pull
    carefully quickly often never always together already perhaps indeed usually
    north south east west first second third final next last other same different
    """.split()
)

STRING_WORDS: Final = VOCABULARY[100:]
_COMMA_BEFORE: Final = frozenset(("and", "but", "so", "which", "when", "perhaps", "indeed"))


def count_tokens(text: str) -> int:
    """Number of tokens in `text` under the simulator's tokenizer."""
    return len(TOKEN_RE.findall(text))


def count_json_tokens(value: Any) -> int:
    """Tokens of the compact JSON serialization of `value`."""
    return count_tokens(orjson.dumps(value).decode())


def split_pieces(text: str) -> list[str]:
    """Cut `text` into one-token pieces (see the module contract)."""
    return PIECE_RE.findall(text)


def digest_of(*parts: Any) -> bytes:
    """A 32-byte digest of JSON-serializable `parts` with sorted keys.

    Raises TypeError when a part is not JSON-serializable.
    """
    canonical = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(canonical, digest_size=32).digest()


def rng_for(digest: bytes, purpose: str) -> random.Random:
    """A private random generator derived from `digest`, distinct per `purpose`."""
    return random.Random(digest + purpose.encode())


def generate_text(digest: bytes) -> str:
    """Plain English-looking sentences of 8..60 tokens, fully determined by `digest`."""
    rng = rng_for(digest, "text")
    target = rng.randint(MIN_TEXT_TOKENS, MAX_TEXT_TOKENS)
    words = rng.choices(VOCABULARY, k=target)
    parts: list[str] = []
    count = 0
    sentence_length = 0
    sentence_target = rng.randint(5, 12)
    index = 0
    # Reserve one token for the closing full stop.
    while count < target - 1:
        word = words[index]
        index += 1
        if sentence_length == 0:
            parts.append((" " if parts else "") + word.capitalize())
        else:
            parts.append(" " + word)
        count += 1
        sentence_length += 1
        remaining = target - 1 - count
        if sentence_length >= sentence_target and remaining >= 3:
            parts.append(".")
            count += 1
            sentence_length = 0
            sentence_target = rng.randint(5, 12)
        elif sentence_length >= 3 and remaining >= 3 and words[index] in _COMMA_BEFORE:
            parts.append(",")
            count += 1
    parts.append(".")
    return "".join(parts)


def generate_words(rng: random.Random, count: int) -> str:
    """`count` lowercase words joined by spaces, drawn from `rng`."""
    return " ".join(rng.choices(STRING_WORDS, k=count))
