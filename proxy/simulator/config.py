"""Settings of one simulator instance.

A `SimulatorConfig` is immutable; the running app keeps its own copy on its state and
`POST /_sim/config` swaps in a modified copy, so a config object handed to `make_app`
is never changed behind the caller's back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated upstream behaves.

    latency_ms: delay before the first byte of every API answer (non-stream: before the
        response; stream: before the headers). Per request: header `x-sim-latency-ms`.
    token_delay_ms: delay between two streamed events. Per request: `x-sim-token-delay-ms`.
    seed: mixed into every deterministic answer; two simulators with the same seed give
        the same text for the same request.
    request_log_size: how many recent API requests `GET /_sim/requests` can show.
    response_store_size: how many Responses-API objects are kept for retrieve/chaining.
    prefix_cache_size: how many prompt-prefix hashes are remembered for cache reporting.
    requests_per_minute, tokens_per_minute: the limits reported in rate-limit headers
        (reported only; the simulator never refuses a request on its own).
    """

    latency_ms: float = 0
    token_delay_ms: float = 0
    seed: str = ""
    request_log_size: int = 200
    response_store_size: int = 1000
    prefix_cache_size: int = 10_000
    requests_per_minute: int = 10_000
    tokens_per_minute: int = 30_000_000
