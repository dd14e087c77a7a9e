"""One call's requests to models of the other provider: translated once, on first use.

The pipeline asks ``can_serve`` which fallbacks it may try, ``request`` what to send a
model of the other provider, and ``note`` to mark the record's attempts that went out
translated (``translated_to``: the endpoint that served them; ``dropped_fields``: what
the translation could not carry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.endpoints.base import Endpoint, JsonObject, RequestFacts
from proxy.errors import GatewayError, UpstreamRejected
from proxy.prompt_cache import mark_system_prompt
from proxy.translate.bridge import bridge_for
from proxy.translate.translated import Translated
from shared.catalogue import ModelEntry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Crossing:
    endpoint: Endpoint  # the caller's
    facts: RequestFacts
    body: JsonObject  # the caller's request as it goes to the caller's provider
    # max_tokens for a translated request that sets none (called once, when translating)
    default_max_tokens: Callable[[], int]
    is_prompt_cache_marked: bool = False
    request_id: str = ""
    _made: dict[str, Translated] = field(default_factory=dict)  # by provider
    _sent: dict[str, str] = field(default_factory=dict)  # model name -> its provider

    def can_serve(self, model: ModelEntry) -> bool:
        """True if ``model`` can answer this call: same provider, or a bridge exists."""
        provider = self.endpoint.provider
        return (
            model.provider == provider or bridge_for(self.endpoint.name, model.provider) is not None
        )

    def request(self, model: ModelEntry) -> tuple[str, JsonObject]:
        """(path, body) for ``model`` of the other provider; KeyError if no bridge."""
        bridge = bridge_for(self.endpoint.name, model.provider)
        if bridge is None:
            raise KeyError(f"no bridge from {self.endpoint.name} to {model.provider}")
        made = self._made.get(model.provider)
        if made is None:
            made = bridge.translate_request(self.body, self.default_max_tokens())
            self._made[model.provider] = made
            log.info(
                "event=request_translated request_id=%s from=%s to=%s dropped=%s",
                self.request_id,
                self.endpoint.name,
                bridge.target.name,
                ",".join(made.dropped) or "-",
            )
        body = bridge.target.upstream_body(made.body, self.facts, model.upstream_model)
        if self.is_prompt_cache_marked:
            body = mark_system_prompt(bridge.target.name, body)
        self._sent[model.name] = model.provider
        return bridge.target.upstream_path, body

    def is_translated(self, model_name: str) -> bool:
        return model_name in self._sent

    def rejection(self, error: UpstreamRejected) -> GatewayError:
        """The other provider's refusal of a translated request, in the caller's dialect
        (passed through as it came, its body would be in the wrong one)."""
        return GatewayError(
            f"The fallback model refused the translated request: {error.message}",
            status=error.status,
            code=error.code,
        )

    def note(self, attempts: list[dict[str, Any]]) -> None:
        """Mark ``attempts`` of models that were sent a translated request."""
        for attempt in attempts:
            provider = self._sent.get(attempt.get("model", ""))
            bridge = bridge_for(self.endpoint.name, provider) if provider else None
            if provider is None or bridge is None or attempt.get("error") == "circuit_open":
                continue
            attempt["translated_to"] = bridge.target.name
            if self._made[provider].dropped:
                attempt["dropped_fields"] = list(self._made[provider].dropped)
