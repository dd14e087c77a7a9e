"""The call context: what the pipeline learns about one call, and its record."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from proxy.cache import CacheTicket
from proxy.config_cache import Principal
from proxy.endpoints.base import RequestFacts
from proxy.quota import Reservation
from proxy.ratelimit import RateGrant
from shared.body_storage import FULL, stored_body
from shared.catalogue import ModelEntry
from shared.pricing import Usage
from shared.records import CallRecord

if TYPE_CHECKING:
    from proxy.tracing import Trace


@dataclass(slots=True)
class CallContext:
    """Mutable state of one call; turned into exactly one ``CallRecord``."""

    dialect: str
    endpoint: str
    client_request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    session_id: str | None = None
    replay_of: str | None = None  # the record a console replay links to (x-metergate-replay-of)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    raw_body: bytes = b""
    principal: Principal | None = None
    facts: RequestFacts | None = None
    model: ModelEntry | None = None
    answered_model: ModelEntry | None = None  # the model that answered (a fallback, maybe)
    upstream_seconds: float = 0.0
    first_token_at: float | None = None
    status: int = 200
    error_code: str | None = None
    error_message: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    response_body: str | None = None
    upstream_request_id: str | None = None
    response_id: str | None = None  # the provider's id of the answer (chatcmpl-…, resp_…)
    is_cached: bool = False
    cache_saved_usd: Decimal = Decimal(0)  # a hit: the original cost; else prompt-cache savings
    cache: CacheTicket | None = None  # None: the response cache plays no part in this call
    attempts: list[dict[str, Any]] | None = None
    refusal_reason: str | None = None
    rate_grant: RateGrant | None = None  # what the rate limits charged; corrected at the end
    reservation: Reservation | None = None  # the quota hold; settled at the end
    flag_reasons: list[str] = field(default_factory=list)
    output_valid: bool | None = None  # None: no JSON schema asked for, or nothing to check
    trace: Trace | None = None  # None: tracing is off (proxy.tracing), the usual case

    @property
    def request_id(self) -> str:
        """The id the client sees in ``x-request-id``: its own if it sent one."""
        return self.client_request_id or self.id

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def overhead_ms(self) -> float:
        return max(0.0, self.elapsed_ms() - self.upstream_seconds * 1000.0)

    def to_record(self) -> CallRecord:
        latency_ms = self.elapsed_ms()
        principal = self.principal
        facts = self.facts
        model = self.model
        storage = principal.body_storage if principal else FULL
        # Built from the gateway's own typed values: constructed, not validated again.
        return CallRecord.model_construct(
            id=self.id,
            client_request_id=self.client_request_id,
            created_at=self.created_at,
            finished_at=self.created_at + timedelta(milliseconds=latency_ms),
            tenant_id=principal.tenant_id if principal else None,
            user_id=principal.user_id if principal else None,
            key_id=principal.key_id if principal else None,
            dialect=self.dialect,
            endpoint=self.endpoint,
            model=model.name if model else (facts.model if facts else None),
            provider=model.provider if model else None,
            upstream_model=(self.answered_model or model).upstream_model if model else None,
            answered_model=self.answered_model.name if self.answered_model else None,
            is_stream=facts.is_stream if facts else False,
            status=self.status,
            error_code=self.error_code,
            error_message=self.error_message,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            cache_read_tokens=self.usage.cache_read_tokens,
            cache_write_tokens=self.usage.cache_write_tokens,
            cost_usd=self.cost_usd,
            session_id=self.session_id,
            replay_of=self.replay_of,
            end_user=facts.end_user if facts else None,
            latency_ms=latency_ms,
            upstream_latency_ms=self.upstream_seconds * 1000.0 if self.upstream_seconds else None,
            ttft_ms=(self.first_token_at - self.started) * 1000.0 if self.first_token_at else None,
            overhead_ms=max(0.0, latency_ms - self.upstream_seconds * 1000.0),
            client_ip=self.client_ip,
            user_agent=self.user_agent,
            is_cached=self.is_cached,
            cache_saved_usd=self.cache_saved_usd,
            upstream_request_id=self.upstream_request_id,
            response_id=self.response_id,
            attempts=self.attempts,
            refusal_reason=self.refusal_reason,
            flag_reasons=list(dict.fromkeys(self.flag_reasons)) or None,
            output_valid=self.output_valid,
            # As much as the tenant keeps, secrets redacted (the client and upstream saw them).
            request_body=stored_body(self.raw_body.decode("utf-8", "replace"), storage),
            response_body=stored_body(self.response_body, storage),
        )
