"""`POST /v1/moderations`: deterministic flags from trigger words.

An input is flagged when one of its words starts with a trigger (case-insensitive):

    kill     -> violence, harassment/threatening
    bomb     -> violence, illicit/violent
    hate     -> hate, harassment
    suicide  -> self-harm, self-harm/intent

Flagged categories score 0.9 and up; the others get tiny deterministic scores. A string
or a list of strings gives one result per string; a list of multimodal parts
(`{"type": "text", ...}`, `{"type": "image_url", ...}`) gives one result.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

from .errors import Dialect, invalid_request, missing_field
from .reply import Call, Reply, json_reply
from .state import JsonObject
from .text import digest_of, rng_for

DEFAULT_MODEL: Final = "omni-moderation-latest"
CATEGORIES: Final = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
TRIGGERS: Final[dict[str, tuple[str, ...]]] = {
    "kill": ("violence", "harassment/threatening"),
    "bomb": ("violence", "illicit/violent"),
    "hate": ("hate", "harassment"),
    "suicide": ("self-harm", "self-harm/intent"),
}
_WORD_RE: Final = re.compile(r"\w+")


def create_moderation(call: Call) -> Reply:
    """Answer one moderations request (see module docstring)."""
    body = call.body
    raw = body.get("input")
    if raw is None:
        raise missing_field(Dialect.OPENAI, "input")
    model = body.get("model", DEFAULT_MODEL)
    if not isinstance(model, str):
        raise invalid_request("Invalid 'model': expected a string.", param="model")
    if isinstance(raw, str):
        texts = [(raw, False)]
    elif isinstance(raw, list) and raw and all(isinstance(v, str) for v in raw):
        texts = [(text, False) for text in raw]
    elif isinstance(raw, list) and raw and all(isinstance(v, dict) for v in raw):
        texts = [(_parts_text(raw), any(p.get("type") == "image_url" for p in raw))]
    else:
        raise invalid_request(
            "'input' must be a string, a list of strings or a list of input parts.",
            param="input",
        )
    results = [_result(text, has_image, call.state.config.seed) for text, has_image in texts]
    return json_reply({"id": "modr-" + os.urandom(16).hex(), "model": model, "results": results})


def _parts_text(parts: list[Any]) -> str:
    return " ".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def _result(text: str, has_image: bool, seed: str) -> JsonObject:
    hits: set[str] = set()
    for word in _WORD_RE.findall(text.lower()):
        for trigger, categories in TRIGGERS.items():
            if word.startswith(trigger):
                hits.update(categories)
    rng = rng_for(digest_of(text, seed), "moderation")
    scores = {
        name: round(0.9 + rng.random() * 0.09, 6) if name in hits else round(rng.random() * 1e-3, 8)
        for name in CATEGORIES
    }
    input_types = ["text", "image"] if has_image else ["text"]
    return {
        "flagged": bool(hits),
        "categories": {name: name in hits for name in CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {name: input_types for name in CATEGORIES},
    }
