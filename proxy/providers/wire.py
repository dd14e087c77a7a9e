"""The connections of the hot path's pool (``sdk.direct_pool``): urllib3's, reading a
response's header block without the ``email`` package, and checking an idle connection
without gevent's poll.

``http.client`` hands every response's header block to ``email.parser``: its feed
parser, a ``Message`` built line by line, its policy. Measured in place, that took 94 us
of a proxied call for the simulator's 13 headers; ``parse_headers`` below takes 23. It
builds the same ``HTTPMessage`` directly from a header block in the form every provider
sends (``name: value`` lines), and leaves anything else (folded lines, a field without
a name, stray carriage returns) to the ``email`` parser as before;
``tests/proxy/test_wire.py`` checks both give the same message. Nothing outside these
connections changes: ``http.client`` itself is not patched.

Before the pool hands out an idle connection, urllib3 checks the provider has not closed
it; these connections ask with ``proxy.readiness.is_readable_now`` (gevent's poll would
cost about 17 times as much).
"""

from __future__ import annotations

import email.parser
import http.client
import re
import socket
import types
from typing import Any, BinaryIO

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from proxy.readiness import is_readable_now

_REQUEST_STARTED = http.client._CS_REQ_STARTED  # type: ignore[attr-defined]

# A block of plain fields: each line a field name (visible ASCII but ':'), a colon and a
# value without CR or LF, ended by LF or CRLF; then the blank line (or none, at EOF).
_PLAIN_BLOCK = re.compile(r"(?:[!-9;-~]+:[^\r\n]*\r?\n)*(?:\r?\n)?")
# The email parser (``compat32``) keeps a value from after the colon, less leading
# spaces and tabs, to the line end; the name as it came.
_FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n")


def parse_headers(
    fp: BinaryIO, _class: type[http.client.HTTPMessage] = http.client.HTTPMessage
) -> http.client.HTTPMessage:
    """``http.client.parse_headers``: the header block from ``fp`` as an ``HTTPMessage``,
    the same one the ``email`` parser would build. Limits (line length, field count)
    are ``http.client``'s, raised as it raises them."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # its limits
    block = b"".join(lines).decode("iso-8859-1")
    if _PLAIN_BLOCK.fullmatch(block) is None:
        return email.parser.Parser(_class=_class).parsestr(block)  # type: ignore[return-value]
    message = _class()
    message._headers = _FIELD.findall(block)  # type: ignore[attr-defined]  # compat32's list
    message.set_payload("")  # what the email parser leaves after a header block
    return message


def _begin_with(parse: Any) -> Any:
    """``HTTPResponse.begin`` of the running Python, calling ``parse`` for its header
    block: the same code, given globals where ``parse_headers`` is ``parse``. (Its only
    other use of the module is constants and ``_read_headers``.)"""
    begin = http.client.HTTPResponse.begin
    scope = {**vars(http.client), "parse_headers": parse}
    return types.FunctionType(begin.__code__, scope, begin.__name__, begin.__defaults__)


class QuickHeadersResponse(http.client.HTTPResponse):
    """``http.client``'s response, its header block read by ``parse_headers``."""

    begin = _begin_with(parse_headers)


# Header lines already checked and encoded by ``http.client``, by (name, *values): most
# of a provider request's headers are the same on every call (the SDK's own, the key).
HEADER_LINES_KEPT = 256  # emptied when full: per-call values (content-length) churn
_header_lines: dict[tuple[Any, ...], bytes] = {}
_KEPT_TYPES = (str, bytes)


class _Quick:
    """What the pool's connections change of urllib3's: their responses' headers are read
    by ``parse_headers``, and before the pool hands one out again it is checked by
    ``is_readable_now`` (urllib3 asks the same through ``select``'s poll, which gevent
    patches)."""

    sock: socket.socket | None
    response_class: type[http.client.HTTPResponse] = QuickHeadersResponse

    @property
    def is_connected(self) -> bool:
        return self.sock is not None and not is_readable_now(self.sock)

    def putheader(self, header: str, *values: str) -> None:
        """urllib3's ``putheader``, each distinct line checked and encoded once: a line
        seen before goes out as ``http.client`` made it then."""
        key = None
        # Only a str name with one str or bytes value: equal keys then encode alike (an int
        # or a bool value could equal one that encodes otherwise).
        if type(header) is str and len(values) == 1 and type(values[0]) in _KEPT_TYPES:
            key = (header, values[0])
            line = _header_lines.get(key)
            if line is not None and self._HTTPConnection__state == _REQUEST_STARTED:  # type: ignore[attr-defined]
                self._output(line)  # type: ignore[attr-defined]
                return
        buffered = len(self._buffer)  # type: ignore[attr-defined]
        super().putheader(header, *values)  # type: ignore[misc]  # checks; raises as it does
        # Kept if it made one line (urllib3 makes none for a skipped header).
        if key is not None and len(self._buffer) == buffered + 1:  # type: ignore[attr-defined]
            if len(_header_lines) >= HEADER_LINES_KEPT:
                _header_lines.clear()
            _header_lines[key] = self._buffer[-1]  # type: ignore[attr-defined]


class Connection(_Quick, HTTPConnection):  # type: ignore[misc]  # putheader: as urllib3 has it
    pass


class TlsConnection(_Quick, HTTPSConnection):  # type: ignore[misc]  # the same
    pass


def use_quick_connections(pool: HTTPConnectionPool) -> HTTPConnectionPool:
    """Make ``pool``'s connections (made from now on) ``Connection`` / ``TlsConnection``."""
    pool.ConnectionCls = TlsConnection if isinstance(pool, HTTPSConnectionPool) else Connection
    return pool
