"""Bounds on the HTTP connections of every service (uvicorn + httptools), against clients that hold
sockets open without finishing a request: idle sockets, slowloris (headers a byte at a time),
sockets that send only blank lines, too many sockets at once.

    header timeout    a request's head (request line + headers) must arrive within `header_timeout_s`
                      of the connection opening or of the first byte after the previous response;
                      otherwise the connection is closed. This also closes a socket that never sends
                      anything, or only blank lines (the parser skips them without starting a message).
    keep-alive        uvicorn's own `timeout_keep_alive` (set by `serve` from the settings): an idle
                      kept-alive connection is closed that long after its last response.
    header size       more than `max_header_bytes` of request line and headers (as parsed, or as
                      received while the head is still incomplete): 431 and close. httptools sets no
                      limit: a client could grow one header value, or the header list, without end.
    connections       at most `max_connections` open per process. A connection over the limit is
                      answered 503 (JSON, Retry-After, `connection: close`) on its first request and
                      closed; connections already open keep working. (uvicorn's `limit_concurrency`
                      answers 503 on *every* connection once the count is reached, so idle sockets
                      would lock out the clients already being served; it is not used.)

uvicorn has no header-read timeout (`timeout_keep_alive` is armed only after a response), hence
this subclass of its httptools protocol. `bounded_protocol(limits)` returns the class to pass as
`uvicorn.Config(http=...)`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_OVER_LIMIT_BODY = (b'{"error":"too many open connections to this server; retry later",'
                    b'"code":"overloaded","field":"connection"}')
_HEADERS_TOO_LARGE_BODY = b'{"error":"request line and headers too large","code":"headers_too_large","field":"headers"}'
_HEADERS_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                        b"content-length: " + str(len(_HEADERS_TOO_LARGE_BODY)).encode()
                      + b"\r\nconnection: close\r\n\r\n" + _HEADERS_TOO_LARGE_BODY)

_MALFORMED_BODY = b'{"error":"malformed HTTP request (request line or headers)","code":"bad_request","field":"request"}'
_MALFORMED = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
              + str(len(_MALFORMED_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _MALFORMED_BODY)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_connections: int


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(_OVER_LIMIT_BODY)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _OVER_LIMIT_BODY})


def bounded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits` (see the module docstring)."""

    class BoundedHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_raw = 0
        _head_parsed = 0
        _head_too_large = False
        _over_limit = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # Counted after adding this one: the first `max_connections` are served normally.
            self._over_limit = len(self.connections) > limits.max_connections
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_head_timer()  # the first byte of a new request (uvicorn stops its keep-alive timer)
            super().data_received(data)
            if self._head_timer is not None:
                # Still no complete head: count what was fed (a header value still being received is
                # buffered by the parser without a callback).
                self._head_raw += len(data)
                if self._head_raw > limits.max_header_bytes:
                    self._head_too_large = True
                    self.send_400_response("")

        def on_url(self, url: bytes) -> None:
            self._count_parsed(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_parsed(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count_parsed(self, size: int) -> None:
            # A head that arrives whole in one read is never "incomplete": count what the parser saw.
            self._head_parsed += size
            if self._head_parsed > limits.max_header_bytes:
                self._head_too_large = True
                raise ValueError("request head too large")  # uvicorn answers a parser error via send_400_response

        def send_400_response(self, msg: str) -> None:
            # uvicorn's answer to a request httptools cannot parse (a DEL in a header value, a bad request
            # line ...) is plain text; every other error here is JSON.
            self._cancel_head_timer()
            if not self.transport.is_closing():
                self.transport.write(_HEADERS_TOO_LARGE if self._head_too_large else _MALFORMED)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            self._head_raw = self._head_parsed = 0
            if self._over_limit:
                # uvicorn starts the cycle with `self.app`; this connection gets the 503 instead.
                app, self.app = self.app, _too_many_connections
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedHttpProtocol
