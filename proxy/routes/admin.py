"""The admin REST API under ``/admin/v1`` (see ``proxy.admin``), and its OpenAPI document.

Admin calls are not request records (they are no LLM calls); their writes are audited.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from proxy.admin import schemas as s
from proxy.admin import service
from proxy.admin.openapi import build_document
from proxy.admin.operations import AdminApi, error_response
from proxy.errors import GatewayError, MethodNotAllowed, NotFound

PREFIX = "/admin/v1"
blueprint = Blueprint("admin", __name__, url_prefix=PREFIX)
api = AdminApi(blueprint, PREFIX)
operation = api.operation

# -- tenants
operation("GET", "/tenants", s.TenantList, summary="List tenants", tag="tenants")(
    service.list_tenants
)
operation(
    "POST",
    "/tenants",
    s.Tenant,
    summary="Create a tenant",
    tag="tenants",
    status=201,
    body=s.TenantCreate,
    may_conflict=True,
)(service.create_tenant)
operation(
    "GET",
    "/tenants/{tenant_id}",
    s.Tenant,
    summary="Get a tenant",
    tag="tenants",
    path_params=s.TenantPath,
)(service.get_tenant)
operation(
    "PUT",
    "/tenants/{tenant_id}/body-storage",
    s.Tenant,
    summary="Keep a tenant's bodies in full, redacted or not at all",
    tag="tenants",
    path_params=s.TenantPath,
    body=s.TenantBodyStorage,
)(service.set_tenant_body_storage)

# -- tiers
operation("GET", "/tiers", s.TierList, summary="List tiers", tag="tiers")(service.list_tiers)
operation(
    "POST",
    "/tiers",
    s.Tier,
    summary="Create a tier",
    tag="tiers",
    status=201,
    body=s.TierCreate,
    may_conflict=True,
)(service.create_tier)
operation(
    "GET", "/tiers/{tier_id}", s.Tier, summary="Get a tier", tag="tiers", path_params=s.TierPath
)(service.get_tier)
operation(
    "PUT",
    "/tiers/{tier_id}",
    s.Tier,
    summary="Replace a tier's limits and policy",
    tag="tiers",
    path_params=s.TierPath,
    body=s.TierSettings,
    may_conflict=True,
)(service.replace_tier)

# -- users
operation("GET", "/users", s.UserList, summary="List users", tag="users", query=s.UserQuery)(
    service.list_users
)
operation(
    "POST",
    "/users",
    s.User,
    summary="Create a user",
    tag="users",
    status=201,
    body=s.UserCreate,
    may_conflict=True,
    refers=True,
)(service.create_user)
operation(
    "GET", "/users/{user_id}", s.User, summary="Get a user", tag="users", path_params=s.UserPath
)(service.get_user)
operation(
    "PUT",
    "/users/{user_id}/limits",
    s.User,
    summary="Replace a user's limit overrides",
    tag="users",
    path_params=s.UserPath,
    body=s.LimitsIn,
    may_conflict=True,
)(service.replace_user_limits)
operation(
    "PUT",
    "/users/{user_id}/tier",
    s.User,
    summary="Move a user to another tier",
    tag="users",
    path_params=s.UserPath,
    body=s.UserTier,
    may_conflict=True,
)(service.set_user_tier)

# -- keys
operation("GET", "/keys", s.KeyList, summary="List keys", tag="keys", query=s.KeyQuery)(
    service.list_keys
)
operation(
    "POST",
    "/keys",
    s.CreatedKey,
    summary="Create a key (its secret is in this answer only)",
    tag="keys",
    status=201,
    body=s.KeyCreate,
    may_conflict=True,
    refers=True,
)(service.create_key)
operation("GET", "/keys/{key_id}", s.Key, summary="Get a key", tag="keys", path_params=s.KeyPath)(
    service.get_key
)
operation(
    "POST",
    "/keys/{key_id}/revoke",
    s.Key,
    summary="Revoke a key",
    tag="keys",
    path_params=s.KeyPath,
    may_conflict=True,
)(service.revoke_key)
operation(
    "PUT",
    "/keys/{key_id}/limits",
    s.Key,
    summary="Replace a key's limits and end-user tier",
    tag="keys",
    path_params=s.KeyPath,
    body=s.KeyLimits,
    may_conflict=True,
)(service.replace_key_limits)

# -- caps
operation("GET", "/caps", s.Caps, summary="Monthly USD caps", tag="caps")(service.get_caps)
operation(
    "PUT",
    "/caps/global",
    s.Caps,
    summary="Set or remove the deployment's monthly USD cap",
    tag="caps",
    body=s.CapIn,
    may_conflict=True,
)(service.set_global_cap)
operation(
    "PUT",
    "/caps/tenants/{tenant_id}",
    s.Caps,
    summary="Set or remove a tenant's monthly USD cap",
    tag="caps",
    path_params=s.TenantPath,
    body=s.CapIn,
    may_conflict=True,
)(service.set_tenant_cap)

# -- models and prices
operation("GET", "/models", s.ModelList, summary="The model catalogue", tag="prices")(
    service.list_models
)
operation(
    "GET", "/models/{name}", s.Model, summary="Get a model", tag="prices", path_params=s.ModelPath
)(service.get_model)
operation(
    "PUT",
    "/models/{name}",
    s.Model,
    summary="Add a model or change its prices and fallbacks",
    tag="prices",
    path_params=s.ModelPath,
    body=s.ModelSave,
    may_conflict=True,
)(service.save_model)

# -- usage and records
operation("GET", "/usage", s.Usage, summary="A month's usage", tag="usage", query=s.UsageQuery)(
    service.get_usage
)
operation(
    "GET", "/records", s.RecordList, summary="List records", tag="records", query=s.RecordQuery
)(service.list_records)
operation(
    "GET",
    "/records/{record_id}",
    s.RecordDetail,
    summary="Get a record with its bodies",
    tag="records",
    path_params=s.RecordPath,
)(service.get_record)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document (public: it holds no data)."""
    return jsonify(_document())


@cache
def _document() -> dict[str, Any]:
    try:
        package_version = version("metergate")
    except PackageNotFoundError:
        package_version = "0"
    return build_document(api.operations, PREFIX, package_version)


def is_admin_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def http_error(exc: HTTPException) -> Response:
    """Routing and protocol errors under the prefix, in the admin API's shape."""
    if exc.code == 404:
        error: GatewayError = NotFound(f"Unknown route: {request.method} {request.path}.")
    elif exc.code == 405:
        error = MethodNotAllowed("This method is not allowed here.")
    else:
        error = GatewayError(exc.description or "Bad request.", status=exc.code or 400)
    return error_response(error)


def internal_error() -> Response:
    return error_response(GatewayError("The admin API failed to handle this request."))
