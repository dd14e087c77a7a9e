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
    golden silver gentle clear honest modern ancient local global rapid
    river mountain forest ocean garden city village bridge road harbor island valley
    morning evening winter summer autumn spring weather cloud rain wind light shadow
    make take give find tell ask seem feel try leave call keep start show hear play
    run move live believe bring happen write provide sit stand lose pay meet include
    continue set learn change lead understand watch follow stop create speak read
    allow add spend grow open walk offer remember love consider appear buy wait serve
    send expect build stay fall reach remain suggest raise pass report decide pull
    carefully quickly often never always together already perhaps indeed usually
    north south east west first second third final next last other same different
    lantern meadow orchard canyon desert glacier lagoon prairie summit tunnel
    engine ledger invoice receipt channel archive journal letter harvest beacon
    compass anchor pillar copper marble velvet thunder ember
    """.split()
)
STRING_WORDS: Final = VOCABULARY[100:]


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
    return "".join(generate_pieces(digest))


def generate_pieces(digest: bytes) -> list[str]:
    """`generate_text(digest)` already cut into its one-token pieces.

    The bytes of a hash of the digest pick whole sentences from a fixed table built at
    import; the last sentence is cut from a run of words so that the total is exactly
    the 8..60 tokens the first byte asked for. A handful of list extensions per call
    keeps this cheap enough to run on every request.
    """
    stream = hashlib.blake2b(digest, digest_size=32, person=b"sim-text").digest()
    remaining = MIN_TEXT_TOKENS + stream[0] % (MAX_TEXT_TOKENS - MIN_TEXT_TOKENS + 1)
    pieces: list[str] = []
    # Every sentence has >= 6 tokens, so at most 11 bytes are needed for 60 tokens.
    for byte in stream[1:]:
        sentence = _SENTENCES[byte]
        if len(sentence) == remaining or len(sentence) <= remaining - 2:
            pieces.extend(sentence)
            remaining -= len(sentence)
            if remaining == 0:
                break
        else:
            pieces.extend(_WORD_RUNS[byte % len(_WORD_RUNS)][: remaining - 1])
            pieces.append(".")
            break
    pieces[0] = pieces[0].lstrip()
    return pieces


def _build_sentences(rng: random.Random) -> tuple[tuple[str, ...], ...]:
    """256 sentences of 5..12 words as one-token pieces (leading spaces included)."""
    sentences: list[tuple[str, ...]] = []
    for _ in range(256):
        words = rng.choices(VOCABULARY, k=rng.randint(5, 12))
        pieces = [" " + words[0].capitalize()]
        for index, word in enumerate(words[1:], start=1):
            if 3 <= index < len(words) - 1 and rng.random() < 0.12:
                pieces.append(",")
            pieces.append(" " + word)
        pieces.append(".")
        sentences.append(tuple(pieces))
    return tuple(sentences)


def _build_word_runs(rng: random.Random) -> tuple[tuple[str, ...], ...]:
    """64 capitalised runs of words without punctuation, for cutting a last sentence."""
    return tuple(
        tuple(
            " " + (word.capitalize() if index == 0 else word)
            for index, word in enumerate(rng.choices(VOCABULARY, k=MAX_TEXT_TOKENS))
        )
        for _ in range(64)
    )


_SENTENCES: Final = _build_sentences(random.Random("metergate-simulator-sentences"))
_WORD_RUNS: Final = _build_word_runs(random.Random("metergate-simulator-word-runs"))


def generate_words(rng: random.Random, count: int) -> str:
    """`count` lowercase words joined by spaces, drawn from `rng`."""
    return " ".join(rng.choices(STRING_WORDS, k=count))
