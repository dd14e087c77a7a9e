"""Reading back what the proxy recorded about one call."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.models import RequestBody, RequestRecord
from tests.support import ProxyServer, wait_for

Recorded = tuple[RequestRecord, RequestBody | None]


def only_record(server: ProxyServer, request_id: str, timeout: float = 10.0) -> Recorded:
    """The one record of the call answered with ``x-request-id: request_id``.

    Polls (flush, then query): a stream is recorded after its last byte went out, so
    the client can be done before the record is queued. Fails when the call left no
    record within ``timeout`` seconds, or more than one.
    """

    def lookup() -> list[Recorded] | None:
        server.flush()
        with Session(server.state.engine, expire_on_commit=False) as session:
            rows = session.scalars(
                select(RequestRecord).where(
                    or_(
                        RequestRecord.id == request_id,
                        RequestRecord.client_request_id == request_id,
                    )
                )
            ).all()
            return [(row, session.get(RequestBody, row.id)) for row in rows] or None

    found = wait_for(lookup, timeout)
    assert found is not None
    assert len(found) == 1, f"{len(found)} records for one call {request_id}"
    return found[0]
