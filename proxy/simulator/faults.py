"""Fault injection: which fault a request gets, and the rules queued for later requests.

A request gets at most one fault, taken from the first source that names one:

1. the request header `x-sim-fault: <fault>`;
2. the body field `"sim_fault": "<fault>"` (never echoed back);
3. the control queue filled by `POST /_sim/faults` — rules are tried in FIFO order, the
   first rule whose `path` prefix and `model` match is used and its `count` decremented
   (dropped at zero). A request faulted by 1. or 2. does not consume a queued rule.

Parameters: `retry_after` seconds for `429` (header `x-sim-retry-after`, body
`sim_retry_after`, rule `"retry_after"`; default 1, fractions allowed) and `delay_ms`
for `slow` (header `x-sim-slow-ms`, body `sim_slow_ms`, rule `"delay_ms"`; default 3000).
`invalid_json_output` answers normally, except that a chat completion asked for a
`json_schema` / `json_object` response format gets content that is not valid JSON.
An unknown fault name or a malformed parameter is a `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

DEFAULT_RETRY_AFTER_SECONDS: Final = 1.0
DEFAULT_SLOW_MS: Final = 3000.0


class Fault(StrEnum):
    """The faults the simulator can inject (values are the names used on the wire)."""

    RATE_LIMITED = "429"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    OVERLOADED = "529"
    SLOW = "slow"
    HANG = "hang"
    DROP = "drop"
    TRUNCATE = "truncate"
    GARBAGE = "garbage"
    WRONG_CONTENT_TYPE = "wrong_content_type"
    INVALID_JSON_OUTPUT = "invalid_json_output"


STATUS_FAULTS: Final = frozenset(
    (Fault.RATE_LIMITED, Fault.SERVER_ERROR, Fault.UNAVAILABLE, Fault.OVERLOADED)
)
# Faults the handler applies to an otherwise normal answer (see `reply.Call.fault`).
ANSWER_FAULTS: Final = frozenset((Fault.SLOW, Fault.TRUNCATE, Fault.INVALID_JSON_OUTPUT))


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The fault one request gets, with its parameters."""

    fault: Fault
    retry_after_seconds: float = DEFAULT_RETRY_AFTER_SECONDS
    delay_ms: float = DEFAULT_SLOW_MS


@dataclass(slots=True)
class FaultRule:
    """A queued fault for the next `remaining` requests matching `path_prefix`/`model`."""

    plan: FaultPlan
    remaining: int
    path_prefix: str | None = None
    model: str | None = None

    def matches(self, path: str, model: str | None) -> bool:
        """Whether a request to `path` for `model` is covered by this rule."""
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.model is None or self.model == model

    def to_json(self) -> dict[str, Any]:
        """The rule as shown by `GET /_sim/faults`."""
        return {
            "fault": self.plan.fault.value,
            "count": self.remaining,
            "path": self.path_prefix,
            "model": self.model,
            "retry_after": self.plan.retry_after_seconds,
            "delay_ms": self.plan.delay_ms,
        }


class FaultQueue:
    """FIFO of `FaultRule`s; `take` consumes one use of the first matching rule."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rule: FaultRule) -> None:
        """Queue `rule` behind the existing ones."""
        self._rules.append(rule)

    def clear(self) -> None:
        """Forget every queued rule."""
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """A snapshot of the queued rules, first to be used first."""
        return list(self._rules)

    def take(self, path: str, model: str | None) -> FaultPlan | None:
        """The plan of the first rule matching the request, consuming one of its uses."""
        for index, rule in enumerate(self._rules):
            if rule.matches(path, model):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[index]
                return rule.plan
        return None


def parse_rule(data: Any) -> FaultRule:
    """Build a rule from the JSON body of `POST /_sim/faults`.

    Raises ValueError when the fault is unknown or a field has the wrong type.
    """
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError("count must be a positive integer")
    path, model = data.get("path"), data.get("model")
    if path is not None and not isinstance(path, str):
        raise ValueError("path must be a string")
    if model is not None and not isinstance(model, str):
        raise ValueError("model must be a string")
    plan = build_plan(data.get("fault"), data.get("retry_after"), data.get("delay_ms"))
    return FaultRule(plan=plan, remaining=count, path_prefix=path, model=model)


def build_plan(fault: Any, retry_after: Any = None, delay_ms: Any = None) -> FaultPlan:
    """Validate a fault name and its optional parameters (strings or numbers).

    Raises ValueError for an unknown fault or a non-numeric / negative parameter.
    """
    try:
        kind = Fault(str(fault))
    except ValueError:
        names = ", ".join(f.value for f in Fault)
        raise ValueError(f"unknown fault {fault!r}; expected one of {names}") from None
    return FaultPlan(
        fault=kind,
        retry_after_seconds=_non_negative(retry_after, DEFAULT_RETRY_AFTER_SECONDS),
        delay_ms=_non_negative(delay_ms, DEFAULT_SLOW_MS),
    )


def resolve(
    queue: FaultQueue,
    headers: Mapping[str, str],
    body: Mapping[str, Any] | None,
    path: str,
    model: str | None,
) -> FaultPlan | None:
    """The fault for one request (see the module docstring for the precedence).

    Raises ValueError for an unknown fault name or malformed parameter in the request.
    """
    named = headers.get("x-sim-fault")
    if named is not None:
        return build_plan(named, headers.get("x-sim-retry-after"), headers.get("x-sim-slow-ms"))
    if body is not None and "sim_fault" in body:
        return build_plan(
            body["sim_fault"],
            headers.get("x-sim-retry-after", body.get("sim_retry_after")),
            headers.get("x-sim-slow-ms", body.get("sim_slow_ms")),
        )
    if not queue:
        return None
    return queue.take(path, model)


def _non_negative(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not 0 <= number < math.inf:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return number
