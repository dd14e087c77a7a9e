"""The admin API's OpenAPI 3.1 document, generated from its operations and their models.

Paths, parameters and statuses come from the registered ``Operation`` list; request
bodies are the models' validation schemas and answers their serialisation schemas
(pydantic's JSON Schema 2020-12, which OpenAPI 3.1 takes as it is). Nothing is
written here by hand that the server could disagree with.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from proxy.admin.operations import Operation
from proxy.admin.schemas import ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "adminToken"
ERROR_MEANINGS = {
    400: "Invalid query parameters or body (``error.param`` names the first bad field).",
    401: "Missing or incorrect admin token (or the admin API is off).",
    403: "A gateway key was sent instead of the admin token.",
    404: "Nothing has this id or name.",
    409: "The name is taken, or another change got there first.",
    413: "The body is over METERGATE_MAX_BODY_BYTES.",
    429: "Too many failed tokens from this IP; Retry-After says when to try again.",
    503: "The database is unavailable; try again shortly.",
}
DESCRIPTION = """\
Tenants, users, tiers, keys, caps, prices, usage and request records of a metergate
deployment. Every call needs `Authorization: Bearer <METERGATE_ADMIN_TOKEN>`; gateway
keys are refused (403). Writes take effect on every proxy process within
`METERGATE_CONFIG_POLL_SECONDS` and are audited (actor `admin-api`). Money and prices
are decimal strings in answers (numbers or strings in requests). Errors use OpenAI's
shape: `{"error": {"message", "type", "param", "code"}}`.
"""


def build_document(operations: list[Operation], prefix: str, version: str) -> dict[str, Any]:
    """The OpenAPI document of ``operations`` mounted at ``prefix``."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for operation in operations:
        if operation.body is not None:
            wanted.append((operation.body, "validation"))
        wanted.append((operation.response, "serialization"))
    refs, definitions = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE)
    error_schema = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        item = paths.setdefault(prefix + operation.path, {})
        item[operation.method.lower()] = _operation(operation, refs, error_schema)
    return {
        "openapi": "3.1.0",
        "info": {"title": "metergate admin API", "version": version, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}},
        },
        "security": [{SECURITY_SCHEME: []}],
    }


def _operation(
    operation: Operation,
    refs: dict[tuple[Any, JsonSchemaMode], Any],
    error_schema: dict[str, Any],
) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    doc = inspect.getdoc(operation.view)
    if doc:
        described["description"] = doc
    parameters = _parameters(operation.path_params, "path") + _parameters(operation.query, "query")
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    answer = refs[(operation.response, "serialization")]
    responses: dict[str, Any] = {
        str(operation.status): {
            "description": operation.response.__doc__ or operation.summary,
            "content": {"application/json": {"schema": answer}},
        }
    }
    for status in operation.error_statuses:
        responses[str(status)] = {
            "description": ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": error_schema}},
        }
    described["responses"] = responses
    return described


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation", ref_template=REF_TEMPLATE)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema["properties"].items():
        description = field_schema.get("description")
        parameter: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _without_null(field_schema),
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _without_null(field_schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter is absent or a value: drop the ``null`` branch, the title and the
    description (it is the parameter's), and a ``null`` default."""
    schema = {k: v for k, v in field_schema.items() if k not in ("title", "description", "anyOf")}
    if schema.get("default", 0) is None:
        del schema["default"]
    branches = [b for b in field_schema.get("anyOf", ()) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    return schema
