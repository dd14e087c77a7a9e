"""Stage: screen a request before it costs anything (cache lookup, upstream call).

In order, cheapest first:

1. size limits: message count (``METERGATE_MAX_MESSAGES``), the estimated prompt tokens
   (the tier's ``max_prompt_tokens``) and the ``max_tokens`` asked for (the effective
   ``max_tokens`` ceiling). The body size was checked when it was read (413).
2. prompt-injection rules (``shared.screening``): the first blocking rule that matches
   refuses the call; every matching flag rule adds a flag reason.
3. moderation through OpenAI's endpoint, when the tier asks for it ("flag" or "block").
   A moderation check that cannot be made never takes the call down: it goes ahead,
   flagged ``moderation_unavailable``.

Refusals are ``ScreeningRefusal`` (400); ``screen`` returns the flag reasons of a call
that may go ahead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from proxy.config_cache import Principal
from proxy.endpoints.base import RequestFacts
from proxy.errors import ScreeningRefusal
from proxy.providers.base import UpstreamError
from shared.screening import CompiledRule
from shared.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

MODERATION_UNAVAILABLE = "moderation_unavailable"


@runtime_checkable
class Moderator(Protocol):
    def moderate(self, inputs: list[str]) -> list[str]:
        """The flagged categories (sorted, [] if none); raises UpstreamError if unavailable."""
        ...


def moderator_of(providers: Mapping[str, object]) -> Moderator | None:
    """The provider that can run moderation checks (OpenAI's), if there is one."""
    provider = providers.get("openai")
    if provider is None:
        return None
    kind = type(provider)
    is_moderator = _IS_MODERATOR.get(kind)
    if is_moderator is None:  # a runtime Protocol check is slow: once per class, not per call
        is_moderator = _IS_MODERATOR[kind] = isinstance(provider, Moderator)
    return provider if is_moderator else None  # type: ignore[return-value]


_IS_MODERATOR: dict[type, bool] = {}


def screen(
    facts: RequestFacts,
    principal: Principal,
    rules: Sequence[CompiledRule],
    *,
    max_messages: int,
    moderator: Moderator | None,
) -> list[str]:
    """Flag reasons for a call that may go ahead; raises ScreeningRefusal otherwise."""
    check_size(facts, principal, max_messages)
    reasons = check_rules(rules, facts.prompt_text)
    if principal.moderation_action in ("flag", "block"):
        reasons += check_moderation(moderator, principal.moderation_action, facts.prompt_text)
    return reasons


def check_size(facts: RequestFacts, principal: Principal, max_messages: int) -> None:
    if facts.message_count > max_messages:
        raise ScreeningRefusal(
            f"This request has {facts.message_count} messages; the limit is {max_messages}.",
            code="too_many_messages",
            param="messages",
        )
    ceiling = principal.max_prompt_tokens
    if ceiling is not None:
        estimate = estimate_prompt_tokens(facts.prompt_text)
        if estimate > ceiling:
            raise ScreeningRefusal(
                f"The prompt is about {estimate} tokens; your tier allows {ceiling} per request. "
                "Shorten the conversation or the documents sent with it.",
                code="prompt_too_long",
                param="messages",
            )
    max_tokens = principal.limits.max_tokens
    if max_tokens is not None and facts.max_tokens is not None and facts.max_tokens > max_tokens:
        raise ScreeningRefusal(
            f"max_tokens is {facts.max_tokens}; your tier allows at most {max_tokens}.",
            code="max_tokens_too_large",
            param="max_tokens",
        )


def check_rules(rules: Sequence[CompiledRule], prompt_text: Sequence[str]) -> list[str]:
    """Flag reasons of the matching flag rules; raises on the first matching block rule."""
    if not rules or not prompt_text:
        return []
    text = "\n\n".join(prompt_text)
    reasons: list[str] = []
    for rule in rules:  # blocking rules come first
        if rule.regex.search(text) is None:
            continue
        if rule.is_blocking:
            raise ScreeningRefusal(
                f"This request was blocked by the screening rule '{rule.name}'.",
                param="messages",
            )
        reasons.append(f"screening: {rule.name}")
    return reasons


def check_moderation(
    moderator: Moderator | None, action: str, prompt_text: Sequence[str]
) -> list[str]:
    """Flag reasons from a moderation check; raises when ``action`` is "block" and it flags."""
    inputs = [part for part in prompt_text if part.strip()]
    if not inputs:
        return []
    if moderator is None:
        return [MODERATION_UNAVAILABLE]
    try:
        categories = moderator.moderate(inputs)
    except UpstreamError as exc:  # fail open: moderation is a screen, not a gate
        log.warning("event=moderation_unavailable error=%s", type(exc).__name__)
        return [MODERATION_UNAVAILABLE]
    if not categories:
        return []
    named = ", ".join(categories)
    if action == "block":
        raise ScreeningRefusal(
            f"This request was blocked by content moderation (categories: {named}).",
            param="messages",
        )
    return [f"moderation: {named}"]
