"""What an endpoint handler receives and returns.

Handlers are plain functions `Call -> Reply`: they never touch the HTTP layer, so latency,
faults, rate-limit headers and the actual writing live in one place (`dispatch`).
A handler signals a client error by raising `errors.SimError`.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import orjson

from .faults import Fault
from .state import JsonObject, SimulatorState

_BASE64_TO_ALPHANUMERIC: Final = bytes.maketrans(b"+/", b"xQ")
DONE_FRAME: Final = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed API request: the app state, the JSON body ({} when there is none),
    the route parameters (e.g. `response_id`), the fault it was dealt, if any, and
    the query string."""

    state: SimulatorState
    body: JsonObject
    params: Mapping[str, str]
    fault: Fault | None = None
    query: Mapping[str, str] = field(default_factory=dict)  # the query string's values


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A complete JSON answer; `tokens` are charged to the rate-limit window."""

    payload: bytes
    status: int = 200
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A `text/event-stream` answer as ready-made SSE frames, written in order."""

    frames: list[bytes]
    tokens: int = 0


Reply: TypeAlias = JsonReply | StreamReply
Handler: TypeAlias = Callable[[Call], Reply]


def json_reply(payload: Any, *, status: int = 200, tokens: int = 0) -> JsonReply:
    """Serialize `payload` compactly with orjson."""
    return JsonReply(orjson.dumps(payload), status=status, tokens=tokens)


def data_frame(payload: Any) -> bytes:
    """An SSE frame with only a `data:` line (OpenAI chat style)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event_frame(event: str, payload: Any) -> bytes:
    """An SSE frame with `event:` and `data:` lines (Responses API and Anthropic style)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def new_id(prefix: str, length: int) -> str:
    """`prefix` followed by `length` random alphanumeric characters.

    Ids need not be unpredictable, so the fast non-cryptographic generator is used (no
    system call per request).
    """
    raw = base64.b64encode(random.randbytes((length * 3 + 3) // 4))
    return prefix + raw.translate(_BASE64_TO_ALPHANUMERIC)[:length].decode()
