"""Replaying a logged call through the proxy, with the official SDKs, on the console's key.

The console never imports the proxy: a replay is an ordinary call to the proxy's
HTTP API (``METERGATE_CONSOLE_PROXY_URL``) with the real ``openai`` or ``anthropic``
SDK, made with the console's own gateway key (``METERGATE_CONSOLE_API_KEY``), so it
is limited, priced and billed like any call, to the console's tenant and user,
never to the original caller. It carries ``x-metergate-replay-of: <record id>``,
which the proxy stores as the new record's ``replay_of``.

What is sent is the original request body, with:

- the model chosen (the same one, or another of the same provider);
- the system prompt replaced when an edited one is given;
- no stream (the answer is compared whole) and the original end user dropped
  (``user``, ``safety_identifier``, ``metadata.user_id``): the console is the caller;
- ``Cache-Control: no-store``: a replay always asks the model again.

Failures: ``ReplayError`` when nothing could be sent (no key configured, no stored
body, an endpoint that cannot be replayed, the proxy unreachable). A call the proxy
answers with an error is a ``ReplayResult`` carrying that error (it is logged too).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
from sqlalchemy import Engine

from shared import audit
from shared.console_users import Actor, require_role
from shared.conversation import read_conversation
from shared.db import transaction
from shared.search import RecordDetail
from shared.settings import Settings

REPLAY_OF_HEADER = "x-metergate-replay-of"
RECORD_ID_HEADER = "x-metergate-record-id"
COST_HEADER = "x-metergate-cost-usd"
REPLAYABLE_ENDPOINTS = ("chat.completions", "responses", "embeddings", "messages")
END_USER_FIELDS = ("user", "safety_identifier")
SUPPORT = "support"


class ReplayError(Exception):
    """The replay could not be sent; the message says why, for the person who asked."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What to replay: ``system_prompt`` None keeps the original one."""

    record_id: str
    model: str
    system_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The proxy's answer to a replay. ``record_id``: the new record (from its header)."""

    record_id: str | None
    status: int
    request_body: str
    response_body: str
    answer_text: str
    cost_usd: str | None
    error: str | None = None


def replay_record(
    engine: Engine, actor: Actor, detail: RecordDetail, request: ReplayRequest, settings: Settings
) -> ReplayResult:
    """Send the replay (support role), wait for its whole answer, audit it.

    Raises ``PermissionDenied`` for a role below support, ``ReplayError`` when nothing
    could be sent.
    """
    require_role(actor, SUPPORT)
    key = settings.console_api_key.get_secret_value()
    if not key:
        raise ReplayError(
            "Replay is off: set METERGATE_CONSOLE_API_KEY to a gateway key of the console's "
            "own tenant and user."
        )
    body = replay_body(detail, request)
    result = _send(detail, body, request.record_id, key, settings)
    with transaction(engine) as session:
        audit.record(
            session,
            actor,
            "record.replay",
            "record",
            request.record_id,
            after={
                "replay_id": result.record_id,
                "model": request.model,
                "is_system_prompt_edited": request.system_prompt is not None,
                "status": result.status,
            },
        )
    return result


def replay_body(detail: RecordDetail, request: ReplayRequest) -> dict[str, Any]:
    """The body a replay sends (see the module docstring); raises ReplayError."""
    endpoint = detail.summary.endpoint
    if endpoint not in REPLAYABLE_ENDPOINTS:
        raise ReplayError(f"Calls to {endpoint} cannot be replayed.")
    if not detail.request_body:
        raise ReplayError("This record's request body was not kept, so it cannot be replayed.")
    try:
        original = json.loads(detail.request_body)
    except ValueError as exc:
        raise ReplayError("This record's request body is not JSON; it cannot be replayed.") from exc
    if not isinstance(original, dict):
        raise ReplayError("This record's request body is not a JSON object.")
    body = copy.deepcopy(original)
    body["model"] = request.model
    body.pop("stream", None)
    body.pop("stream_options", None)
    for name in END_USER_FIELDS:
        body.pop(name, None)
    if isinstance(body.get("metadata"), dict):
        body["metadata"].pop("user_id", None)
    if request.system_prompt is not None:
        _set_system_prompt(endpoint, body, request.system_prompt)
    return body


def _set_system_prompt(endpoint: str, body: dict[str, Any], prompt: str) -> None:
    if endpoint == "messages":
        body["system"] = prompt
    elif endpoint == "responses":
        body["instructions"] = prompt
    elif endpoint == "chat.completions":
        messages = [
            m
            for m in body.get("messages") or []
            if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))
        ]
        body["messages"] = [{"role": "system", "content": prompt}, *messages]
    else:
        raise ReplayError(f"Calls to {endpoint} have no system prompt to edit.")


# -- sending ----------------------------------------------------------------------------


def _send(
    detail: RecordDetail, body: dict[str, Any], record_id: str, key: str, settings: Settings
) -> ReplayResult:
    endpoint = detail.summary.endpoint
    headers = {REPLAY_OF_HEADER: record_id, "Cache-Control": "no-store"}
    base = settings.console_proxy_url.rstrip("/")
    timeout = settings.console_replay_timeout_seconds
    sent = json.dumps(body, ensure_ascii=False)
    try:
        if endpoint == "messages":
            with anthropic.Anthropic(
                api_key=key, base_url=base, max_retries=0, timeout=timeout
            ) as claude:
                raw = _call(claude.messages.with_raw_response.create, body, headers)
        else:
            with openai.OpenAI(
                api_key=key, base_url=base + "/v1", max_retries=0, timeout=timeout
            ) as client:
                resource = {
                    "chat.completions": client.chat.completions,
                    "responses": client.responses,
                    "embeddings": client.embeddings,
                }[endpoint]
                raw = _call(resource.with_raw_response.create, body, headers)  # type: ignore[attr-defined]
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        response = exc.response
        return ReplayResult(
            record_id=response.headers.get(RECORD_ID_HEADER),
            status=response.status_code,
            request_body=sent,
            response_body=response.text,
            answer_text="",
            cost_usd=response.headers.get(COST_HEADER),
            error=f"The proxy answered {response.status_code}: {_error_message(exc)}",
        )
    except (openai.APIConnectionError, anthropic.APIConnectionError) as exc:
        raise ReplayError(f"Cannot reach the proxy at {base}: {exc}") from exc
    text = raw.http_response.text
    answer = read_conversation(endpoint, sent, text).answer_text()
    return ReplayResult(
        record_id=raw.headers.get(RECORD_ID_HEADER),
        status=raw.http_response.status_code,
        request_body=sent,
        response_body=text,
        answer_text=answer,
        cost_usd=raw.headers.get(COST_HEADER),
    )


def _call(create: Callable[..., Any], body: dict[str, Any], headers: dict[str, str]) -> Any:
    """``create`` with the body's fields as its arguments; fields the SDK does not name go
    in ``extra_body``, untouched (the proxy passes unknown fields through)."""
    named = set(inspect.signature(create).parameters) - {"extra_headers", "extra_body"}
    known = {name: value for name, value in body.items() if name in named}
    extra = {name: value for name, value in body.items() if name not in named}
    return create(**known, extra_body=extra or None, extra_headers=headers)


def _error_message(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc.message)
