"""Provider registry: adding a provider is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable

from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.openai import OpenAIProvider
from shared.settings import Settings

REGISTRY: dict[str, Callable[[Settings], Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
}


def build_providers(settings: Settings) -> dict[str, Provider]:
    return {name: factory(settings) for name, factory in REGISTRY.items()}
