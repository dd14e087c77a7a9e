"""Provider registry: adding a provider is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable

from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.openai import OpenAIProvider
from proxy.providers.sdk import LazySdk, show_headers
from shared.settings import Settings

REGISTRY: dict[str, Callable[[Settings], Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
}


def build_providers(settings: Settings) -> dict[str, Provider]:
    return {name: factory(settings) for name, factory in REGISTRY.items()}


def show_sdk_headers(settings: Settings) -> None:
    """In gunicorn's master, before it forks: the headers of every provider with a key,
    shown by its SDK in a subprocess (``sdk.show_headers``), so the workers call
    providers without importing an SDK."""
    sdks: list[LazySdk] = []
    for provider in build_providers(settings).values():
        sdk = getattr(provider, "hot_path_sdk", None)
        if isinstance(sdk, LazySdk):
            sdks.append(sdk)
    show_headers(sdks)
