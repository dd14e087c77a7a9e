"""Server-sent events: split an upstream byte stream into whole events, unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # the event's bytes including its terminating blank line
    event: str | None
    data: bytes


def parse_event(raw: bytes) -> SseEvent:
    event: str | None = None
    data_lines: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data_lines.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
    return SseEvent(raw=raw, event=event, data=b"\n".join(data_lines))


def iter_events(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """Yield each complete event as soon as its blank line arrives.

    A trailing partial event (a truncated stream) is yielded last, as it is.
    """
    buffer = b""
    for chunk in chunks:
        if not chunk:
            continue
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            raw, buffer = buffer[: end + 2], buffer[end + 2 :]
            if raw.strip():
                yield parse_event(raw)
    if buffer.strip():
        yield parse_event(buffer)
