"""Secrets stay secret: after a full mixed session (answers, streams, cache hits, refusals,
upstream failures, a client leaving mid-stream, a database outage, the admin API) on
gunicorn + PostgreSQL and on the embedded proxy + SQLite, no provider key, admin token
or gateway key is found in anything the system wrote: every text of every table of
both databases, the record spool, the application logs (gunicorn's output and this
process's), /metrics, and every answer a client got.

Gateway keys are looked for by their first 20 characters (the stored display prefix
is 11), so a key logged with a typo or cut short is caught too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx2
import openai
import pytest
from sqlalchemy import Engine, inspect, text

from proxy.simulator import SimulatorThread
from shared.accounts import Limits
from tests.reliability.conftest import (
    ADMIN_SECRET,
    ANTHROPIC_SECRET,
    OPENAI_SECRET,
    Stack,
)
from tests.reliability.traffic import OPENAI_MODEL, body_for, send
from tests.support import running_proxy, seed_accounts, settings_for, wait_for

PROVIDER_MARKS = ("MGRELopenaiProviderSecret", "MGRELanthropicProviderSecret")
ADMIN_MARK = "MGRELadminTokenSecret"
GATEWAY_KEY_CHARS = 20


class Written:
    """Everything collected to scan, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, content: str) -> None:
        self.texts.append((where, content))

    def add_answer(self, where: str, response: httpx2.Response | object) -> None:
        if isinstance(response, httpx2.Response):
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            self.add(f"answer {where}", headers + "\n" + response.text)

    def leaks(self, marks: list[str]) -> list[str]:
        return [
            f"{mark[:12]}… in {where}"
            for where, content in self.texts
            for mark in marks
            if mark in content
        ]


def session(base_url: str, key: str, tight_key: str, user_id: int, written: Written) -> str:
    """A bit of everything, answered or refused, through ``base_url``; the gateway key
    it had the admin API create."""
    secret_prompt = f"Keys: {OPENAI_SECRET} {ANTHROPIC_SECRET} {key} Bearer {key}"
    with httpx2.Client(base_url=base_url, timeout=30) as client:
        outcomes = []
        for dialect in ("openai", "anthropic"):
            for stream in (False, True):
                outcomes.append(send(client, dialect, key, body_for(dialect, "hi", stream=stream)))
                outcomes.append(send(client, dialect, key, body_for(dialect, "hi", stream=stream)))
                outcomes.append(send(client, dialect, key, body_for(dialect, secret_prompt)))
            for fault in ("500", "garbage", "hang", "truncate"):
                body = body_for(dialect, "fail", stream=fault == "truncate", sim_fault=fault)
                outcomes.append(send(client, dialect, key, body))
            outcomes.append(send(client, dialect, key[:-1], body_for(dialect, "typo")))
            outcomes.append(send(client, dialect, None, body_for(dialect, "no key")))
            outcomes.append(send(client, dialect, tight_key, body_for(dialect, "over quota")))
            outcomes.append(send(client, dialect, key, b"{not json"))
        for outcome in outcomes:
            written.add(f"answer {outcome.request_id}", str(outcome.headers) + outcome.text)
        assert {o.status for o in outcomes} >= {200, 400, 401, 429, 502, 504}

        admin = {"authorization": f"Bearer {ADMIN_SECRET}"}
        created = client.post("/admin/v1/keys", json={"user_id": user_id}, headers=admin)
        assert created.status_code == 201, created.text
        admin_key = created.json()["secret"]
        for response in (
            client.get("/admin/v1/tenants", headers=admin),
            client.get("/admin/v1/keys", headers=admin),
            client.get("/admin/v1/tenants", headers={"authorization": "Bearer wrong-admin-token"}),
            client.get("/admin/v1/tenants", headers={"authorization": f"Bearer {key}"}),
            client.get("/v1/models", headers={"authorization": f"Bearer {admin_key}"}),
            client.get("/metrics"),
        ):
            written.add_answer(str(response.request.url), response)
        used = send(client, "openai", admin_key, body_for("openai", "with the new key"))
        assert used.status == 200
        written.add("answer admin-created key", str(used.headers) + used.text)

    # A client leaving mid-stream.
    with openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0) as oai:
        stream = oai.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": secret_prompt}],
            stream=True,
        )
        next(iter(stream))
        stream.close()
    return str(admin_key)


def table_texts(engine: Engine) -> list[tuple[str, str]]:
    """Every row of every table, as text (PostgreSQL: the row cast; SQLite: each value)."""
    found = []
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            if engine.dialect.name == "postgresql":
                rows = connection.execute(text(f'SELECT t::text FROM "{table}" AS t')).scalars()
                found += [(f"table {table}", row) for row in rows]
            else:
                for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                    found.append((f"table {table}", " ".join(str(value) for value in row)))
    return found


def user_id_of(engine: Engine, email: str) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(text("SELECT id FROM users WHERE email = :e"), {"e": email}))


def test_no_secret_is_written_anywhere(
    stack: Stack,
    rel_simulator: SimulatorThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    written = Written()
    limits = Limits(cache_ttl_seconds=300)
    gateway_keys = []

    # gunicorn + PostgreSQL + Redis, with a database outage in the middle.
    key = seed_accounts(stack.engine, limits=limits)
    tight = seed_accounts(stack.engine, limits=Limits(monthly_tokens=1))
    gateway_keys += [key.key, tight.key]
    gateway_keys.append(
        session(stack.base_url, key.key, tight.key, user_id_of(stack.engine, key.user), written)
    )
    stack.relay.cut()
    try:
        with httpx2.Client(base_url=stack.base_url, timeout=30) as client:
            for dialect in ("openai", "anthropic"):
                body = body_for(dialect, f"while the database is away: {OPENAI_SECRET}")
                send(client, dialect, key.key, body)
        for path in wait_for(stack.spool_files, timeout=30):
            written.add(f"spool {path.name}", path.read_text(errors="replace"))
    finally:
        stack.relay.restore()
    wait_for(lambda: not stack.spool_files(), timeout=60)

    # The embedded mode: SQLite, no Redis, in this process (its logs are caplog's).
    settings = settings_for(
        f"sqlite:///{tmp_path / 'secrets.sqlite3'}",
        rel_simulator.base_url,
        tmp_path,
        openai_api_key=OPENAI_SECRET,
        anthropic_api_key=ANTHROPIC_SECRET,
        admin_token=ADMIN_SECRET,
        upstream_first_byte_timeout_seconds=1.0,
        retry_max_attempts=1,
    )
    with running_proxy(settings) as embedded:
        local = seed_accounts(embedded.state.engine, limits=limits)
        local_tight = seed_accounts(embedded.state.engine, limits=Limits(monthly_tokens=1))
        gateway_keys += [local.key, local_tight.key]
        gateway_keys.append(
            session(
                embedded.base_url,
                local.key,
                local_tight.key,
                user_id_of(embedded.state.engine, local.user),
                written,
            )
        )
        embedded.flush()
        for where, content in table_texts(embedded.state.engine):
            written.add(f"sqlite {where}", content)
        for path in sorted(tmp_path.rglob("*.jsonl*")):
            written.add(f"spool {path.name}", path.read_text(errors="replace"))

    for where, content in table_texts(stack.engine):
        written.add(f"postgresql {where}", content)
    written.add("gunicorn output", stack.proxy.log_text())
    written.add("application logs (this process)", caplog.text)
    assert len(written.texts) > 100 and any("gunicorn" in w for w, _ in written.texts)
    gateway_marks = [k[:GATEWAY_KEY_CHARS] for k in gateway_keys]
    assert all(len(k) > GATEWAY_KEY_CHARS + 8 for k in gateway_keys)
    assert not written.leaks([*PROVIDER_MARKS, ADMIN_MARK]), written.leaks(
        [*PROVIDER_MARKS, ADMIN_MARK]
    )
    assert not written.leaks(gateway_marks), written.leaks(gateway_marks)
    # The stored bodies kept the prompt, its secrets replaced by markers.
    assert any(re.search(r"\[REDACTED:openai_key\]", c) for w, c in written.texts if "table" in w)
