"""OpenAI through the official ``openai`` SDK."""

from __future__ import annotations

from typing import Any

from proxy.providers.base import (
    UpstreamNotConfigured,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.providers.sdk import LazySdk, clipped_timeout, send_raw, timeout_for
from shared.settings import Settings

MODERATION_MODEL = "omni-moderation-latest"


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self._timeout = timeout_for(
            settings.upstream_connect_timeout_seconds,
            settings.upstream_first_byte_timeout_seconds,
            settings.upstream_read_timeout_seconds,
        )
        self._has_key = bool(settings.openai_api_key.get_secret_value())
        self._sdk = LazySdk(
            "openai",
            "OpenAI",
            api_key=settings.openai_api_key.get_secret_value() or "unset",
            base_url=settings.openai_base_url,
            max_retries=0,
            timeout=self._timeout,
        )
        self._moderation_timeout = settings.moderation_timeout_seconds

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

    def moderate(self, inputs: list[str]) -> list[str]:
        """The categories OpenAI's moderation endpoint flags in ``inputs`` (sorted; [] if none).

        Raises UpstreamError when the check cannot be made (no key, timeout, error status).
        """
        self._require_key()
        client, _ = self._sdk.get()
        openai = self._sdk.module()
        try:
            result = client.moderations.create(
                model=MODERATION_MODEL, input=inputs, timeout=self._moderation_timeout
            )
        except openai.APITimeoutError as exc:
            raise UpstreamTimeout("the moderation check timed out") from exc
        except openai.APIError as exc:
            raise UpstreamUnreachable(
                f"the moderation check failed ({type(exc).__name__})"
            ) from exc
        flagged: set[str] = set()
        for verdict in result.results:
            if verdict.flagged:
                categories = verdict.categories.model_dump(by_alias=True)
                flagged.update(name for name, is_hit in categories.items() if is_hit)
        return sorted(flagged)

    def close(self) -> None:
        self._sdk.close()

    def _require_key(self) -> None:
        if not self._has_key:
            raise UpstreamNotConfigured("OPENAI_API_KEY is not set on the gateway")
