"""Tenant isolation of stored responses: an id tenant A got is 404 for tenant B's key on
GET, DELETE, cancel, input_items and ``previous_response_id``, and never reaches upstream for B.

Two proxies: embedded (SQLite, in-process owner map) and production-like (PostgreSQL,
Redis database 13).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
import redis

from proxy.response_owners import KEY_PREFIX
from proxy.simulator import SimulatorThread
from shared import accounts
from shared.db import transaction
from tests.proxy.recorded import only_record
from tests.support import Accounts, ProxyServer, running_proxy, seed_accounts, settings_for

if TYPE_CHECKING:
    from tests.proxy.conftest import SimControl

OWNER_REDIS_URL = "redis://127.0.0.1:6379/13"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module", params=["embedded", "redis"])
def gw(
    request: pytest.FixtureRequest,
    simulator: SimulatorThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyServer]:
    data_dir = Path(tmp_path_factory.mktemp(f"isolation-{request.param}"))
    if request.param == "redis":
        redis.Redis.from_url(OWNER_REDIS_URL).flushdb()
        db_url = request.getfixturevalue("pg_url")
        overrides: dict[str, Any] = {"redis_url": OWNER_REDIS_URL}
    else:
        db_url = f"sqlite:///{data_dir / 'metergate.sqlite3'}"
        overrides = {}
    with running_proxy(settings_for(db_url, simulator.base_url, data_dir, **overrides)) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(gw: ProxyServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unset", max_retries=0) as client:
        yield client


@pytest.fixture()
def tenant_a(gw: ProxyServer, sdk: openai.OpenAI) -> openai.OpenAI:
    return sdk.with_options(api_key=seed_accounts(gw.state.engine).key)


@pytest.fixture()
def tenant_b(gw: ProxyServer, sdk: openai.OpenAI) -> openai.OpenAI:
    return sdk.with_options(api_key=seed_accounts(gw.state.engine).key)


def colleague_of(gw: ProxyServer, acct: Accounts) -> str:
    """A key of another user in the same tenant."""
    email = f"colleague-{uuid.uuid4().hex[:8]}@example.com"
    with transaction(gw.state.engine) as session:
        accounts.create_user(session, email, acct.tenant, acct.tier)
        _, secret = accounts.create_key(session, email, name="colleague")
    return secret


def upstream_paths(sim: SimControl) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in sim.requests(200)]


CALLS: dict[str, Callable[[openai.OpenAI, str], Any]] = {
    "retrieve": lambda client, rid: client.responses.retrieve(rid),
    "delete": lambda client, rid: client.responses.delete(rid),
    "cancel": lambda client, rid: client.responses.cancel(rid),
    "input_items": lambda client, rid: client.responses.input_items.list(rid),
    "previous_response_id": lambda client, rid: client.responses.create(
        model=MODEL, input="and then?", previous_response_id=rid
    ),
}


@pytest.mark.parametrize("is_stream", [False, True], ids=["created", "streamed"])
@pytest.mark.parametrize("call", list(CALLS))
def test_another_tenants_key_gets_404_and_nothing_reaches_upstream(
    gw: ProxyServer,
    tenant_a: openai.OpenAI,
    tenant_b: openai.OpenAI,
    sim: SimControl,
    call: str,
    is_stream: bool,
) -> None:
    if is_stream:
        with tenant_a.responses.stream(model=MODEL, input="a secret plan") as stream:
            response_id = stream.get_final_response().id
    else:
        response_id = tenant_a.responses.create(model=MODEL, input="a secret plan").id
    before = upstream_paths(sim)

    with pytest.raises(openai.NotFoundError) as caught:
        CALLS[call](tenant_b, response_id)

    assert upstream_paths(sim) == before
    error = caught.value.body
    assert isinstance(error, dict) and response_id in error["message"]
    if call == "previous_response_id":
        assert (error["code"], error["param"]) == ("previous_response_not_found", call)
    record, _ = only_record(gw, caught.value.response.headers["x-request-id"])
    assert record.status == 404 and record.cost_usd == 0
    # The owner still can: the id was never the other tenant's to touch.
    CALLS[call](tenant_a, response_id)


def test_the_owning_tenant_retrieves_cancels_continues_and_deletes(
    gw: ProxyServer, tenant_a: openai.OpenAI, sim: SimControl
) -> None:
    created = tenant_a.responses.create(model=MODEL, input="remember me")

    raw = tenant_a.responses.with_raw_response.retrieve(created.id)
    assert raw.parse().model_dump() == created.model_dump()
    assert tenant_a.responses.cancel(created.id).id == created.id
    follow_up = tenant_a.responses.create(
        model=MODEL, input="go on", previous_response_id=created.id
    )
    assert follow_up.previous_response_id == created.id
    tenant_a.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):  # the provider's own 404, passed through
        tenant_a.responses.retrieve(created.id)

    assert upstream_paths(sim)[-5:] == [
        f"GET /v1/responses/{created.id}",
        f"POST /v1/responses/{created.id}/cancel",
        "POST /v1/responses",
        f"DELETE /v1/responses/{created.id}",
        f"GET /v1/responses/{created.id}",
    ]
    record, _ = only_record(gw, raw.headers["x-request-id"])
    assert (record.endpoint, record.status, record.response_id) == (
        "responses.retrieve",
        200,
        created.id,
    )
    assert record.model is None and record.cost_usd == 0


def test_the_owning_tenant_lists_the_input_items(
    gw: ProxyServer, tenant_a: openai.OpenAI, sim: SimControl
) -> None:
    created = tenant_a.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ],
    )

    page = tenant_a.responses.input_items.list(created.id, order="asc", limit=2)

    assert [item.content[0].text for item in page.data] == [  # type: ignore[union-attr]
        "first question",
        "first answer",
    ]
    assert page.has_more is True
    rest = tenant_a.responses.input_items.list(created.id, order="asc", after=page.last_id)
    assert [item.content[0].text for item in rest.data] == ["second question"]  # type: ignore[union-attr]
    assert upstream_paths(sim)[-1] == f"GET /v1/responses/{created.id}/input_items"
    raw = tenant_a.responses.input_items.with_raw_response.list(created.id)
    record, _ = only_record(gw, raw.headers["x-request-id"])
    assert (record.endpoint, record.status, record.response_id, record.cost_usd) == (
        "responses.input_items",
        200,
        created.id,
        0,
    )


def test_another_user_of_the_same_tenant_may_use_the_id(
    gw: ProxyServer, sdk: openai.OpenAI
) -> None:
    acct = seed_accounts(gw.state.engine)
    created = sdk.with_options(api_key=acct.key).responses.create(model=MODEL, input="shared")

    colleague = sdk.with_options(api_key=colleague_of(gw, acct))
    assert colleague.responses.retrieve(created.id).id == created.id


@pytest.mark.parametrize("gw", ["redis"], indirect=True)
def test_ownership_survives_a_lost_redis_entry_through_the_request_log(
    gw: ProxyServer, tenant_a: openai.OpenAI, tenant_b: openai.OpenAI
) -> None:
    created = tenant_a.responses.create(model=MODEL, input="written down")
    gw.flush()  # the record is in SQL
    client = redis.Redis.from_url(OWNER_REDIS_URL)
    try:
        assert client.delete(KEY_PREFIX + created.id) == 1
        with pytest.raises(openai.NotFoundError):
            tenant_b.responses.retrieve(created.id)
        assert tenant_a.responses.retrieve(created.id).id == created.id
        assert client.exists(KEY_PREFIX + created.id)  # remembered again
    finally:
        client.close()


def test_unauthenticated_call_on_an_id_is_401(gw: ProxyServer, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk.with_options(api_key="mg-not-a-key").responses.retrieve("resp_123")
