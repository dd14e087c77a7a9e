"""The admin REST API (``/admin/v1``) on a running proxy, on PostgreSQL and SQLite.

Writes go through ``shared.admin`` (announced to every proxy process, audited as
``admin-api``); the tests check the effect where it matters: on the proxy's answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from proxy.simulator import SimulatorThread
from shared.models import AuditEntry, RequestRecord, Tenant, User
from tests.support import (
    Accounts,
    ProxyServer,
    running_proxy,
    seed_accounts,
    settings_for,
    wait_for,
)

TOKEN = "admin-token-" + "0123456789abcdef" * 3


@pytest.fixture(scope="module")
def admin_proxy(
    db_url: str, simulator: SimulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyServer]:
    settings = settings_for(
        db_url, simulator.base_url, Path(tmp_path_factory.mktemp("admin")), admin_token=TOKEN
    )
    with running_proxy(settings) as server:
        yield server


@pytest.fixture()
def admin(admin_proxy: ProxyServer) -> Iterator[httpx2.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx2.Client(
        base_url=admin_proxy.base_url + "/admin/v1", headers=headers, timeout=30
    ) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(response: httpx2.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def chat_status(server: ProxyServer, key: str) -> int:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as client:
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


def audit_actions(server: ProxyServer, target_type: str, target_id: str) -> list[str]:
    with Session(server.state.engine) as session:
        query = (
            select(AuditEntry.action)
            .where(AuditEntry.actor == "admin-api")
            .where(AuditEntry.target_type == target_type, AuditEntry.target_id == target_id)
            .order_by(AuditEntry.id)
        )
        return list(session.scalars(query))


# -- who may call it --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "missing_admin_token"),
        ("Basic YWRtaW46YWRtaW4=", 401, "missing_admin_token"),
        ("Bearer not-the-admin-token-at-all-0000000000", 401, "invalid_admin_token"),
        ("Bearer <gateway key>", 403, "admin_token_required"),
        (f"Bearer {TOKEN}", 200, None),
    ],
)
def test_admin_endpoints_refuse_non_admin_keys(
    admin_proxy: ProxyServer, authorization: str | None, status: int, code: str | None
) -> None:
    acct = seed_accounts(admin_proxy.state.engine)
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("<gateway key>", acct.key)
    response = httpx2.get(admin_proxy.base_url + "/admin/v1/tenants", headers=headers)
    assert response.status_code == status
    if code is not None:
        error = response.json()["error"]
        assert (error["code"], error["type"]) == (
            code,
            "authentication_error" if status == 401 else "permission_error",
        )
        assert error["message"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_admin_api_is_off_without_an_admin_token(proxy: ProxyServer, acct: Accounts) -> None:
    url = proxy.base_url + "/admin/v1/tenants"
    response = httpx2.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "admin_api_disabled")
    response = httpx2.get(url, headers={"Authorization": f"Bearer {acct.key}"})
    assert response.status_code == 403


# -- accounts and keys ------------------------------------------------------------------


def test_tenant_tier_user_key_lifecycle_takes_effect_on_the_proxy(
    admin: httpx2.Client, admin_proxy: ProxyServer
) -> None:
    tenant = ok(admin.post("/tenants", json={"name": unique("t"), "monthly_usd": 50}), 201)
    assert tenant["monthly_usd"] == "50.00000000"
    tier = ok(admin.post("/tiers", json={"name": unique("tier"), "rpm": 100}), 201)
    assert (tier["rpm"], tier["tpm"], tier["moderation"]) == (100, None, "off")
    email = unique("ada") + "@example.com"
    body = {"email": email, "tenant_id": tenant["id"], "tier_id": tier["id"]}
    user = ok(admin.post("/users", json=body), 201)
    created = ok(admin.post("/keys", json={"user_id": user["id"], "name": "backend"}), 201)
    secret = created["secret"]
    assert secret.startswith(created["prefix"]) and created["revoked_at"] is None
    shown = ok(admin.get(f"/keys/{created['id']}"))
    assert "secret" not in shown and shown["prefix"] == created["prefix"]
    listed = ok(admin.get("/keys", params={"user_id": user["id"]}))["data"]
    assert [k["id"] for k in listed] == [created["id"]] and "secret" not in listed[0]

    assert chat_status(admin_proxy, secret) == 200
    revoked = ok(admin.post(f"/keys/{created['id']}/revoke"))
    assert revoked["revoked_at"] is not None
    assert ok(admin.post(f"/keys/{created['id']}/revoke"))["revoked_at"] == revoked["revoked_at"]
    wait_for(lambda: chat_status(admin_proxy, secret) == 401, timeout=10)

    assert audit_actions(admin_proxy, "tenant", tenant["name"]) == ["tenant.create"]
    assert audit_actions(admin_proxy, "tier", tier["name"]) == ["tier.create"]
    assert audit_actions(admin_proxy, "user", email) == ["user.create"]
    assert audit_actions(admin_proxy, "key", str(created["id"])) == ["key.create", "key.revoke"]


def test_limits_are_replaced_as_a_whole(admin: httpx2.Client, admin_proxy: ProxyServer) -> None:
    acct = seed_accounts(admin_proxy.state.engine)
    tiers = {t["name"]: t for t in ok(admin.get("/tiers"))["data"]}
    tier = tiers[acct.tier]
    body = {"rpm": 7, "tpm": 700, "moderation": "flag", "max_prompt_tokens": 900}
    replaced = ok(admin.put(f"/tiers/{tier['id']}", json=body))
    assert (replaced["rpm"], replaced["tpm"], replaced["moderation"]) == (7, 700, "flag")
    replaced = ok(admin.put(f"/tiers/{tier['id']}", json={"rpm": 8}))
    assert (replaced["rpm"], replaced["tpm"], replaced["max_prompt_tokens"]) == (8, None, None)
    assert replaced["moderation"] == "off"

    user = next(u for u in ok(admin.get("/users"))["data"] if u["email"] == acct.user)
    assert ok(admin.put(f"/users/{user['id']}/limits", json={"rpm": 3}))["rpm"] == 3
    other = ok(admin.post("/tiers", json={"name": unique("tier")}), 201)
    assert (
        ok(admin.put(f"/users/{user['id']}/tier", json={"tier_id": other["id"]}))["tier_id"]
        == (other["id"])
    )
    body = {"monthly_usd": "1.5", "end_user_tier_id": other["id"]}
    key = ok(admin.put(f"/keys/{acct.key_id}/limits", json=body))
    assert (key["monthly_usd"], key["end_user_tier_id"]) == ("1.50000000", other["id"])
    assert audit_actions(admin_proxy, "tier", tier["name"]) == ["tier.update", "tier.update"]


def test_a_taken_name_is_a_conflict(admin: httpx2.Client) -> None:
    name = unique("t")
    ok(admin.post("/tenants", json={"name": name}), 201)
    response = admin.post("/tenants", json={"name": name})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [
        ("POST", "/tenants", b"{not json", 400, "invalid_request", None),
        ("POST", "/tenants", {"name": ""}, 400, "invalid_request", "name"),
        ("POST", "/tenants", {"name": "x", "plan": "gold"}, 400, "invalid_request", "plan"),
        ("POST", "/tenants", {"name": "a\u0000b"}, 400, "invalid_request", "name"),
        ("POST", "/tiers", {"name": "x", "rpm": -1}, 400, "invalid_request", "rpm"),
        ("POST", "/tiers", {"name": "x", "rpm": 2**31}, 400, "invalid_request", "rpm"),
        ("POST", "/tiers", {"name": "x", "models": ["no-such-model"]}, 400, "invalid_request",
         None),
        ("POST", "/users", {"email": "a@b.c", "tenant_id": 2**31 - 1, "tier_id": 1}, 404,
         "tenant_not_found", None),
        ("GET", "/tenants/0", None, 404, "not_found", None),
        ("GET", "/tenants/99999999999", None, 404, "not_found", None),
        ("GET", "/keys/2147483647", None, 404, "key_not_found", None),
        ("GET", "/records?limit=0", None, 400, "invalid_request", "limit"),
        ("GET", "/records?since=yesterday", None, 400, "invalid_request", "since"),
        ("GET", "/usage?month=2026-13", None, 400, "invalid_request", "month"),
        ("PUT", "/models/x-1", {"provider": "azure", "input_per_mtok": 1, "output_per_mtok": 1},
         400, "invalid_request", "provider"),
        ("PUT", "/caps/global", {"monthly_usd": -5}, 400, "invalid_request", "monthly_usd"),
        ("PUT", "/tenants/1/body-storage", {"body_storage": "some"}, 400, "invalid_request",
         "body_storage"),
        ("PUT", "/tenants/0/body-storage", {"body_storage": "none"}, 404, "not_found", None),
        ("DELETE", "/tenants", None, 405, "method_not_allowed", None),
        ("GET", "/no-such-thing", None, 404, "not_found", None),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_shaped_errors(
    admin: httpx2.Client,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    param: str | None,
) -> None:
    content = body if isinstance(body, bytes) else None
    payload = None if isinstance(body, bytes) else body
    response = admin.request(method, path, json=payload, content=content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)


# -- caps, prices -----------------------------------------------------------------------


def test_caps_are_set_and_removed(admin: httpx2.Client, admin_proxy: ProxyServer) -> None:
    tenant = ok(admin.post("/tenants", json={"name": unique("t")}), 201)
    caps = ok(admin.put(f"/caps/tenants/{tenant['id']}", json={"monthly_usd": "25.5"}))
    mine = next(c for c in caps["tenants"] if c["tenant_id"] == tenant["id"])
    assert mine["monthly_usd"] == "25.50000000"
    try:
        caps = ok(admin.put("/caps/global", json={"monthly_usd": 1_000_000}))
        assert caps["global_monthly_usd"] == "1000000.00000000"
    finally:
        caps = ok(admin.put("/caps/global", json={"monthly_usd": None}))
    assert caps["global_monthly_usd"] is None
    assert ok(admin.get("/caps")) == caps
    assert audit_actions(admin_proxy, "tenant", tenant["name"]) == ["tenant.create", "cap.tenant"]


def test_a_tenants_body_storage_is_set_and_audited(
    admin: httpx2.Client, admin_proxy: ProxyServer
) -> None:
    tenant = ok(admin.post("/tenants", json={"name": unique("t")}), 201)
    assert tenant["body_storage"] == "full"

    changed = ok(admin.put(f"/tenants/{tenant['id']}/body-storage", json={"body_storage": "none"}))

    assert changed["body_storage"] == "none"
    assert ok(admin.get(f"/tenants/{tenant['id']}"))["body_storage"] == "none"
    assert audit_actions(admin_proxy, "tenant", tenant["name"]) == [
        "tenant.create",
        "tenant.body_storage",
    ]


def test_models_and_prices_are_saved(admin: httpx2.Client, admin_proxy: ProxyServer) -> None:
    name = unique("model")
    body = {"provider": "openai", "input_per_mtok": "0.15", "output_per_mtok": 0.6}
    saved = ok(admin.put(f"/models/{name}", json=body))
    assert (saved["upstream_model"], saved["input_per_mtok"]) == (name, "0.150000")
    assert saved["cached_input_per_mtok"] == "0.150000"  # unset: the input price
    body = {**body, "fallbacks": ["gpt-4o-mini"], "cached_input_per_mtok": "0.000001"}
    saved = ok(admin.put(f"/models/{name}", json=body))
    assert (saved["fallbacks"], saved["cached_input_per_mtok"]) == (["gpt-4o-mini"], "0.000001")
    assert ok(admin.get(f"/models/{name}")) == saved
    assert name in {m["name"] for m in ok(admin.get("/models"))["data"]}
    response = admin.put(f"/models/{name}", json={**body, "fallbacks": ["no-such-model"]})
    assert response.status_code == 400  # not in the catalogue
    assert audit_actions(admin_proxy, "model", name) == ["price.create", "price.update"]


# -- usage and records --------------------------------------------------------------------


def test_usage_and_records_show_the_tenants_calls(
    admin: httpx2.Client, admin_proxy: ProxyServer
) -> None:
    acct = seed_accounts(admin_proxy.state.engine)
    with Session(admin_proxy.state.engine) as session:
        user = session.scalars(select(User).where(User.email == acct.user)).one()
        tenant_id, user_id = user.tenant_id, user.id
    prompt = unique("what is the admin api")
    with openai.OpenAI(
        base_url=admin_proxy.base_url + "/v1", api_key=acct.key, max_retries=0
    ) as client:
        for _ in range(2):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
    assert chat_status(admin_proxy, acct.key) == 200
    admin_proxy.flush()

    usage = ok(admin.get("/usage", params={"tenant_id": tenant_id}))
    assert [t["tenant_id"] for t in usage["tenants"]] == [tenant_id]
    assert [u["user_id"] for u in usage["users"]] == [user_id]
    assert usage["total"]["tokens"] == usage["tenants"][0]["tokens"] > 0
    assert float(usage["total"]["usd"]) > 0

    listed = ok(admin.get("/records", params={"tenant_id": tenant_id, "limit": 2}))
    assert len(listed["data"]) == 2 and listed["has_more"] is True
    created = [r["created_at"] for r in listed["data"]]
    assert created == sorted(created, reverse=True)
    rest = ok(admin.get("/records", params={"tenant_id": tenant_id, "offset": 2}))
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    assert ok(admin.get("/records", params={"tenant_id": tenant_id, "status": 404}))["data"] == []

    oldest = rest["data"][0]
    detail = ok(admin.get(f"/records/{oldest['id']}"))
    assert prompt in detail["request_body"] and detail["response_body"]
    assert (detail["tenant_id"], detail["status"], detail["flags"]) == (tenant_id, 200, [])
    assert detail["attempts"] and detail["feedback"] == []


def test_admin_calls_are_not_request_records(
    admin: httpx2.Client, admin_proxy: ProxyServer
) -> None:
    admin.get("/tenants")
    admin.get("/no-such-thing")
    admin.delete("/tenants")
    httpx2.get(admin_proxy.base_url + "/admin/v1/tenants")  # 401
    admin_proxy.flush()
    with Session(admin_proxy.state.engine) as session:
        query = select(RequestRecord.id).where(RequestRecord.endpoint.startswith("/admin"))
        assert list(session.scalars(query)) == []
        assert session.scalars(select(Tenant.id)).first() is not None
