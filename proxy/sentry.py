"""Optional error reporting to Sentry, on when ``METERGATE_SENTRY_DSN`` is set.

What is reported: every error the proxy logs with ``log.exception`` / ``log.error``
(Sentry's logging integration: the pipeline's and the app's unexpected-error handlers,
the record writer's failures), and exceptions escaping threads, with the request's
method, URL and headers from the Flask integration. No performance tracing.

What never leaves: request bodies (prompts, ``max_request_body_size="never"``), local
variables of stack frames, personal data (``send_default_pii`` stays off), credential
headers (``Authorization``, ``x-api-key``, cookies: dropped), and every string of the
event is passed through ``shared.redact`` (provider and gateway keys, bearer tokens)
and stripped of the configured provider keys themselves, whatever their shape.

``sentry_sdk.init`` sets a process-wide client: it is called from ``create_app``, so
under gunicorn each worker starts its own after the fork. The SDK (about 30 MiB with
what it pulls in, gevent's modules among them) is imported only when a DSN is set.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.redact import redact
from shared.settings import Settings

log = logging.getLogger(__name__)

DROPPED_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})
REDACTED = "[REDACTED]"
FLUSH_SECONDS = 5.0


def init_sentry(settings: Settings) -> bool:
    """Start reporting when a DSN is set; True if it is on."""
    dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    secrets = tuple(
        secret
        for secret in (
            settings.openai_api_key.get_secret_value(),
            settings.anthropic_api_key.get_secret_value(),
            settings.admin_token.get_secret_value(),
            settings.console_api_key.get_secret_value(),
        )
        if secret
    )

    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    def before_send(event: Any, hint: Any) -> Any:
        return scrub_event(event, secrets)

    sentry_sdk.init(
        dsn=dsn,
        integrations=[FlaskIntegration()],
        # send_default_pii is left unset: off (and deprecated in newer SDKs, which warn).
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,
        before_breadcrumb=lambda crumb, hint: scrub_event(crumb, secrets),
    )
    log.info("event=sentry_on")
    return True


def close_sentry(settings: Settings) -> None:
    """Send what is queued (worker exit, tests)."""
    if settings.sentry_dsn.get_secret_value():
        import sentry_sdk

        sentry_sdk.flush(FLUSH_SECONDS)


def scrub_event(event: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """``event`` without credential headers, and with secrets redacted in every string."""
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                name: value
                for name, value in headers.items()
                if str(name).lower() not in DROPPED_HEADERS
            }
        request.pop("cookies", None)
        request.pop("data", None)
    scrubbed: dict[str, Any] = _scrub(event, secrets)
    return scrubbed


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return redact(value)
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets) for item in value]
    return value
