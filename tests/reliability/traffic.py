"""Calls through the proxy over plain HTTP, in either dialect, and what came back.

Plain HTTP (httpx2, the SDKs' own client) rather than the SDKs where a test must see
the exact status, headers and body of every answer, refusals and broken streams
included, and never have a call retried behind its back.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
DIALECTS = ("openai", "anthropic")


def body_for(dialect: str, text: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    """A valid request body of ``dialect`` asking ``text``."""
    messages = [{"role": "user", "content": text}]
    if dialect == "openai":
        return {"model": OPENAI_MODEL, "messages": messages, "stream": stream, **extra}
    return {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 64,
        "messages": messages,
        "stream": stream,
        **extra,
    }


def headers_for(dialect: str, key: str | None, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id, "content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    return headers


def new_request_id(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


@dataclass
class Outcome:
    """One call as the client saw it."""

    request_id: str
    dialect: str
    status: int
    headers: dict[str, str]
    text: str
    seconds: float
    is_stream: bool = False
    error: str | None = None  # a transport failure instead of an answer
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return orjson.loads(self.text)

    @property
    def has_error_event(self) -> bool:
        return self.is_stream and ('"error"' in self.text or "event: error" in self.text)


def send(
    client: httpx2.Client,
    dialect: str,
    key: str | None,
    body: dict[str, Any] | bytes,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> Outcome:
    """POST ``body`` to the dialect's route; streams are read to their end."""
    request_id = request_id or new_request_id(dialect)
    sent_headers = {**headers_for(dialect, key, request_id), **(headers or {})}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    started = time.monotonic()
    try:
        with client.stream(
            "POST", path or PATHS[dialect], content=content, headers=sent_headers
        ) as response:
            text = response.read().decode("utf-8", "replace")
    except httpx2.HTTPError as exc:
        return Outcome(request_id, dialect, 0, {}, "", time.monotonic() - started, error=repr(exc))
    return Outcome(
        request_id,
        dialect,
        response.status_code,
        {name.lower(): value for name, value in response.headers.items()},
        text,
        time.monotonic() - started,
        is_stream=response.headers.get("content-type", "").startswith("text/event-stream"),
    )


def error_shape_problems(outcome: Outcome) -> list[str]:
    """What is wrong with a refusal as a JSON error of its dialect (empty: nothing)."""
    problems: list[str] = []
    content_type = outcome.headers.get("content-type", "")
    if not content_type.startswith("application/json"):
        problems.append(f"content type {content_type!r}")
    lowered = outcome.text.lower()
    if "traceback" in lowered or "<html" in lowered:
        problems.append("a trace or HTML in the body")
    try:
        body = outcome.json()
    except orjson.JSONDecodeError:
        return [*problems, f"not JSON: {outcome.text[:200]!r}"]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        problems.append(f"no error object with a message: {outcome.text[:200]!r}")
    elif outcome.dialect == "anthropic" and (body.get("type") != "error" or "type" not in error):
        problems.append(f"not Anthropic's error shape: {outcome.text[:200]!r}")
    elif outcome.dialect == "openai" and not {"message", "type", "param", "code"} <= set(error):
        problems.append(f"not OpenAI's error shape: {outcome.text[:200]!r}")
    return problems


Kind = tuple[str, bool, bool]  # (dialect, is_stream, is_cached question)
MIXED: tuple[Kind, ...] = (
    ("openai", False, False),
    ("anthropic", False, False),
    ("openai", True, False),
    ("anthropic", True, False),
    ("openai", False, True),
    ("anthropic", True, True),
)


class Traffic:
    """Calls in a loop on a few threads until stopped: unique questions and repeated ones
    (cache hits when the tier caches), both dialects, streamed and not."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        label: str,
        threads: int = 3,
        kinds: tuple[Kind, ...] = MIXED,
    ) -> None:
        self._base_url = base_url
        self._key = key
        self._label = label
        self._kinds = kinds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def count(self, status: int | None = None, since: int = 0) -> int:
        """Outcomes so far (of ``status``), from the ``since``-th on."""
        return sum(1 for o in self.outcomes[since:] if status is None or o.status == status)

    def _run(self, number: int) -> None:
        with httpx2.Client(base_url=self._base_url, timeout=30) as client:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                dialect, stream, cached = self._kinds[(turn + number) % len(self._kinds)]
                text = (
                    f"{self._label} repeated question"
                    if cached
                    else f"{self._label} {uuid.uuid4()}"
                )
                outcome = send(
                    client,
                    dialect,
                    self._key,
                    body_for(dialect, text, stream=stream),
                    request_id=new_request_id(self._label),
                )
                with self._lock:
                    self._outcomes.append(outcome)
