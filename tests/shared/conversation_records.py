"""Request records with real bodies, for the search, flag and conversation tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from shared.models import User
from shared.records import CallRecord, write_records
from tests.support import Accounts, seed_accounts


@dataclass
class Owner:
    """A fresh tenant / user / key, with their ids, so a test sees only its own records."""

    accounts: Accounts
    tenant_id: int
    user_id: int
    key_id: int


def fresh_owner(engine: Engine) -> Owner:
    accounts = seed_accounts(engine)
    with Session(engine) as session:
        user = session.scalars(select(User).where(User.email == accounts.user)).one()
        return Owner(accounts, user.tenant_id, user.id, accounts.key_id)


def chat_body(prompt: str, system: str | None = None, model: str = "gpt-4o-mini") -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return json.dumps({"model": model, "messages": messages})


def chat_answer(text: str) -> str:
    return json.dumps(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )


def call_record(owner: Owner, at: datetime | None = None, **values: Any) -> CallRecord:
    """A successful chat call of ``owner``; ``prompt`` / ``answer`` set the bodies."""
    at = at or datetime.now(UTC)
    prompt = values.pop("prompt", "hello there")
    answer = values.pop("answer", "general kenobi")
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "created_at": at,
        "finished_at": at + timedelta(milliseconds=120),
        "tenant_id": owner.tenant_id,
        "user_id": owner.user_id,
        "key_id": owner.key_id,
        "dialect": "openai",
        "endpoint": "chat.completions",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "status": 200,
        "latency_ms": 120.0,
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "request_body": chat_body(prompt) if prompt is not None else None,
        "response_body": chat_answer(answer) if answer is not None else None,
    }
    fields.update(values)
    return CallRecord.model_validate(fields)


def write(engine: Engine, *records: CallRecord) -> list[str]:
    write_records(engine, list(records))
    return [record.id for record in records]
