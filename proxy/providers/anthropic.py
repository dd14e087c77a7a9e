"""Anthropic through the official ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

import anthropic

from proxy.providers.base import UpstreamNotConfigured, UpstreamResponse
from proxy.providers.sdk import clipped_timeout, send_raw, timeout_for
from shared.settings import Settings

ERRORS = (anthropic.APIStatusError, anthropic.APITimeoutError, anthropic.APIConnectionError)


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, settings: Settings) -> None:
        self._timeout = timeout_for(
            settings.upstream_connect_timeout_seconds,
            settings.upstream_first_byte_timeout_seconds,
            settings.upstream_read_timeout_seconds,
        )
        self._has_key = bool(settings.anthropic_api_key.get_secret_value())
        self._client = anthropic.Anthropic(
            api_key=settings.anthropic_api_key.get_secret_value() or "unset",
            base_url=settings.anthropic_base_url,
            max_retries=0,
            timeout=self._timeout,
        )

    def send(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        timeout_seconds: float | None = None,
    ) -> UpstreamResponse:
        self._require_key()
        timeout = clipped_timeout(self._timeout, timeout_seconds)
        return send_raw(self._client, "POST", path, body, headers, ERRORS, timeout)

    def request(self, method: str, path: str, headers: dict[str, str]) -> UpstreamResponse:
        self._require_key()
        return send_raw(self._client, method, path, None, headers, ERRORS)

    def close(self) -> None:
        self._client.close()

    def _require_key(self) -> None:
        if not self._has_key:
            raise UpstreamNotConfigured("ANTHROPIC_API_KEY is not set on the gateway")
