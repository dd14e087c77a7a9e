"""Simulated OpenAI and Anthropic upstream for the demo, the tests and the benchmarks.

An aiohttp server that answers like the providers' HTTP APIs (deterministic text, tool
calls, structured output, embeddings, moderations, the Responses API, Anthropic
Messages, usage with prompt caching, rate-limit headers) and can be told to misbehave
(429/500/503/529, slow, hang, drop, truncate, garbage, wrong content type,
invalid JSON in structured output).

    make_app(config=None) -> aiohttp.web.Application
    run(host, port, config)          blocking, for `metergate simulator --port P`
    SimulatorThread(config=None)     background server on 127.0.0.1:<free port>
    SimulatorConfig                  latency_ms, token_delay_ms, seed, ...

Module map: `app` routes, `dispatch` the request pipeline, `faults` fault injection,
`control` the `/_sim` endpoints, `openai_*` / `anthropic_messages` the APIs,
`completion` / `text` / `schema_values` the deterministic model, `prompt_cache` cache
reporting, `ratelimit` rate-limit headers, `state` per-app memory.
"""

from __future__ import annotations

from .app import make_app
from .config import SimulatorConfig
from .runner import SimulatorThread, run

__all__ = ["SimulatorConfig", "SimulatorThread", "make_app", "run"]
