"""Cross-provider fallback: OpenAI chat completions <-> Anthropic messages.

Pure translation functions per direction (``openai_to_anthropic``,
``anthropic_to_openai``) and the ``Bridge`` registry the pipeline asks when a fallback
chain reaches a model of the other provider.
"""

from proxy.translate.anthropic_to_openai import chat_request, message_from_completion
from proxy.translate.bridge import Bridge, bridge_for
from proxy.translate.crossing import Crossing
from proxy.translate.openai_to_anthropic import completion_from_message, messages_request
from proxy.translate.translated import Translated

__all__ = [
    "Bridge",
    "Crossing",
    "Translated",
    "bridge_for",
    "chat_request",
    "completion_from_message",
    "message_from_completion",
    "messages_request",
]
