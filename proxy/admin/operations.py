"""The admin API's operations: each one served and described from the same declaration.

``AdminApi.operation`` registers a view with its path, parameters, body and answer
models. Serving it checks the admin token, validates the path (404), query and body
(400) against the models, runs the view, and writes the answer through the answer
model; the OpenAPI document (``proxy.admin.openapi``) is built from the same list, so
what is documented is what is enforced. Errors are JSON in OpenAI's shape::

    401 missing / invalid admin token     403 a gateway key      404 no such thing
    400 invalid parameters or body        409 name taken         413 body too large
    429 too many failed tokens from one IP                       503 database unavailable
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from proxy.admin.auth import check_admin
from proxy.errors import OPENAI, GatewayError, InvalidRequest, NotFound, render
from shared.accounts import AccountConflict, AccountError

log = logging.getLogger(__name__)

View = Callable[..., BaseModel]
ALWAYS = (401, 403, 429, 503)


class Conflict(GatewayError):
    status = 409
    code = "conflict"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, openai_type="conflict_error")


class Unavailable(GatewayError):
    status = 503
    code = "database_unavailable"


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as served and as documented."""

    method: str
    path: str  # OpenAPI template under the prefix: "/tenants/{tenant_id}"
    view: View
    response: type[BaseModel]
    summary: str
    tag: str
    status: int = 200
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    may_conflict: bool = False  # 409 when a name is taken (or the write races another)
    refers: bool = False  # 404 when an id in the body names nothing

    @property
    def operation_id(self) -> str:
        return self.view.__name__

    @property
    def error_statuses(self) -> list[int]:
        statuses = set(ALWAYS)
        if self.query is not None or self.body is not None:
            statuses.add(400)
        if self.path_params is not None or self.refers:
            statuses.add(404)
        if self.body is not None:
            statuses.add(413)
        if self.may_conflict:
            statuses.add(409)
        return sorted(statuses)


class AdminApi:
    """The admin operations of one blueprint (mounted at ``prefix``)."""

    def __init__(self, blueprint: Blueprint, prefix: str) -> None:
        self.blueprint = blueprint
        self.prefix = prefix
        self.operations: list[Operation] = []

    def operation(
        self, method: str, path: str, response: type[BaseModel], **details: Any
    ) -> Callable[[View], View]:
        """Register ``view(engine, **parsed) -> response`` for ``method path``.

        The view gets the app's engine, then ``path``, ``query`` and ``body`` (the parsed
        models) for those the operation declares, and returns the answer model.
        """

        def register(view: View) -> View:
            operation = Operation(method, path, view, response, **details)
            self.operations.append(operation)
            rule = re.sub(r"\{(\w+)\}", r"<\1>", path)
            self.blueprint.add_url_rule(
                rule,
                endpoint=operation.operation_id,
                view_func=_serving(operation),
                methods=[method],
            )
            return view

        return register


def _serving(operation: Operation) -> Callable[..., Response]:
    def serve(**path_values: str) -> Response:
        try:
            answer = _run(operation, path_values)
        except GatewayError as error:
            return error_response(error)
        body = answer.model_dump_json()
        return Response(body, status=operation.status, mimetype="application/json")

    serve.__name__ = operation.operation_id
    return serve


def _run(operation: Operation, path_values: Mapping[str, str]) -> BaseModel:
    state = current_app.extensions["metergate"]
    check_admin(
        state.settings.admin_token.get_secret_value(),
        request,
        state.config,
        state.rate_limits,
        trust_forwarded_for=state.settings.trust_forwarded_for,
    )
    parsed: dict[str, BaseModel] = {}
    if operation.path_params is not None:
        parsed["path"] = _path(operation.path_params, path_values)
    if operation.query is not None:
        parsed["query"] = _validated(operation.query, request.args.to_dict())
    if operation.body is not None:
        parsed["body"] = _validated(operation.body, request.get_data(cache=False))
    try:
        answer = operation.view(state.engine, **parsed)
    except AccountConflict as exc:
        raise Conflict(_sentence(str(exc))) from exc
    except AccountError as exc:
        raise InvalidRequest(_sentence(str(exc))) from exc
    except IntegrityError as exc:  # a concurrent write took the name first
        raise Conflict("Another change got there first; read it and try again.") from exc
    except (OperationalError, InterfaceError, PoolTimeout) as exc:  # connectivity, not data
        log.warning("event=admin_database_error error=%s", type(exc).__name__)
        raise Unavailable("The database is unavailable; try again shortly.") from exc
    if not isinstance(answer, operation.response):
        raise TypeError(f"{operation.operation_id} answered {type(answer).__name__}")
    return answer


def _path(model: type[BaseModel], values: Mapping[str, str]) -> BaseModel:
    """A path that names nothing valid names nothing: 404, not 400."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise NotFound(
            f"Unknown route: {request.method} {request.path}.", code="not_found"
        ) from exc


def _validated(model: type[BaseModel], data: bytes | dict[str, str]) -> BaseModel:
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data or b"null")
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        where = param or ("query" if isinstance(data, dict) else "body")
        raise InvalidRequest(f"{where}: {first['msg']}.", param=param) from exc


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def error_response(error: GatewayError) -> Response:
    """An admin API error: OpenAI's shape, and never a request record."""
    return render(error, OPENAI)
