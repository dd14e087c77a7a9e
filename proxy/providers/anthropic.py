"""Anthropic through the official ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

from proxy.providers.base import UpstreamNotConfigured, UpstreamResponse
from proxy.providers.sdk import LazySdk, clipped_timeout, send_raw, timeout_for
from shared.settings import Settings


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, settings: Settings) -> None:
        self._timeout = timeout_for(
            settings.upstream_connect_timeout_seconds,
            settings.upstream_first_byte_timeout_seconds,
            settings.upstream_read_timeout_seconds,
        )
        self._has_key = bool(settings.anthropic_api_key.get_secret_value())
        self._sdk = LazySdk(
            "anthropic",
            "Anthropic",
            api_key=settings.anthropic_api_key.get_secret_value() or "unset",
            base_url=settings.anthropic_base_url,
            max_retries=0,
            timeout=self._timeout,
        )

    @property
    def hot_path_sdk(self) -> LazySdk | None:
        """The SDK whose headers the master shows before it forks (``show_headers``)."""
        return self._sdk if self._has_key else None

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
        return self._sdk.sender().post(path, body, headers, timeout)

    def request(self, method: str, path: str, headers: dict[str, str]) -> UpstreamResponse:
        self._require_key()
        client, errors = self._sdk.get()
        return send_raw(client, method, path, None, headers, errors)

    def close(self) -> None:
        self._sdk.close()

    def _require_key(self) -> None:
        if not self._has_key:
            raise UpstreamNotConfigured("ANTHROPIC_API_KEY is not set on the gateway")
