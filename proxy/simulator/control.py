"""Control endpoints under `/_sim` (never faulted, delayed, counted or recorded).

    GET    /_sim/health            {"ok": true}
    GET    /_sim/stats             counts per path and per path+model, faults, in-flight
    POST   /_sim/reset             clear stats, fault queue, request log, prefix cache,
                                   stored responses (config is kept)
    GET    /_sim/requests?limit=N  the last N recorded API requests, oldest first
    POST   /_sim/faults            queue {"fault", "count"?, "path"?, "model"?,
                                   "retry_after"?, "delay_ms"?}
    GET    /_sim/faults            the queued rules
    DELETE /_sim/faults            drop every queued rule
    GET    /_sim/config            the current config
    POST   /_sim/config            change {"latency_ms"?, "token_delay_ms"?, "seed"?}

Malformed control requests get 400 `{"error": "<reason>"}`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import orjson
from aiohttp import web

from .faults import parse_rule
from .state import STATE_KEY

DEFAULT_REQUEST_LIMIT: Final = 50
_RUNTIME_SETTINGS: Final = {"latency_ms": float, "token_delay_ms": float, "seed": str}


def add_control_routes(router: web.UrlDispatcher) -> None:
    """Register the `/_sim` endpoints on `router`."""
    router.add_get("/_sim/health", health)
    router.add_get("/_sim/stats", stats)
    router.add_post("/_sim/reset", reset)
    router.add_get("/_sim/requests", recent_requests)
    router.add_post("/_sim/faults", add_fault)
    router.add_get("/_sim/faults", list_faults)
    router.add_delete("/_sim/faults", clear_faults)
    router.add_get("/_sim/config", show_config)
    router.add_post("/_sim/config", update_config)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers={"Content-Type": "application/json"}
    )


async def _read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body; ValueError when it is not one."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


async def health(request: web.Request) -> web.Response:
    """Liveness: always `{"ok": true}`."""
    return _json({"ok": True})


async def stats(request: web.Request) -> web.Response:
    """Request counters since start or the last reset."""
    return _json(request.app[STATE_KEY].stats.to_json())


async def reset(request: web.Request) -> web.Response:
    """Forget everything but the config."""
    request.app[STATE_KEY].reset()
    return _json({"ok": True})


async def recent_requests(request: web.Request) -> web.Response:
    """The last `limit` recorded API requests (default 50), oldest first."""
    raw = request.query.get("limit", str(DEFAULT_REQUEST_LIMIT))
    if not raw.isdigit():
        return _json({"error": "limit must be a non-negative integer"}, 400)
    log = list(request.app[STATE_KEY].requests)
    chosen = log[len(log) - int(raw) :] if int(raw) < len(log) else log
    return _json({"requests": [record.to_json() for record in chosen]})


async def add_fault(request: web.Request) -> web.Response:
    """Queue a fault rule for the next matching requests."""
    try:
        rule = parse_rule(await _read_object(request))
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    queue = request.app[STATE_KEY].faults
    queue.add(rule)
    return _json({"queued": len(queue), "rule": rule.to_json()})


async def list_faults(request: web.Request) -> web.Response:
    """The queued rules, first to be used first."""
    return _json({"rules": [rule.to_json() for rule in request.app[STATE_KEY].faults.rules()]})


async def clear_faults(request: web.Request) -> web.Response:
    """Drop every queued rule."""
    request.app[STATE_KEY].faults.clear()
    return _json({"ok": True})


async def show_config(request: web.Request) -> web.Response:
    """The config in force."""
    return _json(dataclasses.asdict(request.app[STATE_KEY].config))


async def update_config(request: web.Request) -> web.Response:
    """Change runtime settings; unknown keys or wrong types are rejected as a whole."""
    try:
        changes = await _read_object(request)
        updates: dict[str, Any] = {name: _setting(name, value) for name, value in changes.items()}
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    state = request.app[STATE_KEY]
    state.config = dataclasses.replace(state.config, **updates)
    return _json(dataclasses.asdict(state.config))


def _setting(name: str, value: Any) -> float | str:
    kind = _RUNTIME_SETTINGS.get(name)
    if kind is None:
        raise ValueError(f"unknown setting {name!r}; changeable: {', '.join(_RUNTIME_SETTINGS)}")
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)
