"""Everything one simulator instance remembers, kept on the aiohttp app under `STATE_KEY`.

Nothing here is shared between apps: two simulators in one process are independent.
All methods run on the app's event loop (no locking).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .config import SimulatorConfig
from .faults import FaultQueue
from .ratelimit import RateWindow

JsonObject = dict[str, Any]


@dataclass(slots=True)
class RecordedRequest:
    """One API request as received (headers are kept as the immutable request proxy)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    received_at: float

    def to_json(self) -> JsonObject:
        """The record with lower-cased header names, as `GET /_sim/requests` shows it."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": self.body,
            "received_at": self.received_at,
        }


@dataclass(slots=True)
class Stats:
    """Request counters since start or the last reset."""

    started_at: float = field(default_factory=time.time)
    by_path: Counter[str] = field(default_factory=Counter)
    by_path_model: dict[str, Counter[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0

    def count(self, path: str, model: str | None) -> None:
        """Count one request to `path` (and to `model` under it when known)."""
        self.by_path[path] += 1
        if model is not None:
            per_model = self.by_path_model.get(path)
            if per_model is None:
                per_model = self.by_path_model[path] = Counter()
            per_model[model] += 1

    def to_json(self) -> JsonObject:
        """The counters as `GET /_sim/stats` shows them."""
        return {
            "started_at": self.started_at,
            "total": sum(self.by_path.values()),
            "in_flight": self.in_flight,
            "by_path": dict(self.by_path),
            "by_path_model": {path: dict(models) for path, models in self.by_path_model.items()},
            "faults": dict(self.faults),
        }


class BoundedSet:
    """A set of byte keys that forgets the least recently used beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 1)
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)  # type: ignore[arg-type]
            return True
        return False

    def add(self, key: bytes) -> None:
        """Remember `key`, evicting the oldest key when full."""
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        """Forget every key."""
        self._keys.clear()


@dataclass(slots=True)
class StoredResponse:
    """A Responses-API object kept for retrieve, delete, cancel and chaining.

    `context_tokens` is the conversation length a follow-up request inherits
    (input plus output tokens of this response).
    """

    body: JsonObject
    digest: bytes
    context_tokens: int
    input_items: tuple[JsonObject, ...] = ()  # as `GET .../input_items` lists them


class ResponseStore:
    """Stored responses by id, oldest evicted beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 1)
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None when unknown or evicted."""
        return self._items.get(response_id)

    def put(self, response_id: str, item: StoredResponse) -> None:
        """Store `item`, evicting the oldest when full."""
        self._items[response_id] = item
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def pop(self, response_id: str) -> StoredResponse | None:
        """Remove and return the stored response, or None when unknown."""
        return self._items.pop(response_id, None)

    def clear(self) -> None:
        """Forget every stored response."""
        self._items.clear()


class SimulatorState:
    """Per-app mutable state: config, counters, logs, caches and queued faults."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.requests: deque[RecordedRequest] = deque(maxlen=max(config.request_log_size, 1))
        self.faults = FaultQueue()
        self.prefixes = BoundedSet(config.prefix_cache_size)
        self.responses = ResponseStore(config.response_store_size)
        self.openai_rate = RateWindow()
        self.anthropic_rate = RateWindow()

    def reset(self) -> None:
        """Forget stats, queued faults, the request log, seen prefixes and responses.

        The config (including runtime changes) is kept; in-flight requests keep counting.
        """
        in_flight = self.stats.in_flight
        self.stats = Stats(in_flight=in_flight)
        self.requests.clear()
        self.faults.clear()
        self.prefixes.clear()
        self.responses.clear()
        self.openai_rate = RateWindow()
        self.anthropic_rate = RateWindow()


STATE_KEY: Final = web.AppKey("metergate_simulator_state", SimulatorState)
