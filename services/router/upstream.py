"""A lean HTTP/1.1 client for the router's upstream calls: keep-alive pools, httptools parsing.

The router's cost per request is the point of the benchmark (issue 4 part 6), and a general
client spends more CPU per call than the proxying itself: httpx ~400 µs, aiohttp ~150 µs on the
2-core box. This client does only what the proxy needs — one POST or GET with a body, a
Content-Length or chunked response — on asyncio protocols with the C parser of httptools, which
uvicorn already uses on the server side. Measured cost: see services/router/README.md.

    pool = Pool("http://127.0.0.1:8501", connect_timeout_s=0.5, max_idle=64, idle_timeout_s=4.0)
    resp = await pool.request(b"POST", b"/v2/models/m/infer", body, timeout_s=1.0, headers=b"x-request-id: 1\r\n")
    resp.status, resp.body, resp.content_type

Failures raise `UpstreamError` (connect refused, reset, timeout, malformed response) with a
short `kind` for metrics. A request that finds its reused keep-alive connection closed by the
server before any byte of the answer arrived is retried once on a fresh connection (the server
never saw it), so a server's idle-connection reaping never surfaces as an error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import httptools

#: Response headers kept besides Content-Type (the proxy needs no others).
_KEPT_HEADERS = frozenset({b"inference-header-content-length", b"retry-after"})


class UpstreamError(Exception):
    """The upstream could not produce a response. `kind` labels metrics (`connect`, `timeout`, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class _Stale(Exception):
    """A reused connection was closed before the answer started: safe to resend once."""


class _Connection(asyncio.Protocol):
    __slots__ = (
        "transport", "parser", "waiter", "status", "parts", "headers", "content_type", "keep_alive",
        "closed", "received", "idle_since", "_loop",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.status = 0
        self.parts: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_type = b""
        self.keep_alive = True
        self.closed = False
        self.received = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if not self.received:
                self.waiter.set_exception(_Stale())
            else:
                reason = f": {exc}" if exc else ""
                self.waiter.set_exception(UpstreamError("reset", f"connection closed mid-response{reason}"))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value
        elif lowered in _KEPT_HEADERS:
            self.headers.append((lowered, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            parts = self.parts
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            waiter.set_result(Response(self.status, body, self.content_type, self.headers))

    # -- helpers --------------------------------------------------------------------------------

    def begin(self) -> asyncio.Future[Response]:
        self.waiter = self._loop.create_future()
        self.status = 0
        self.parts = []
        self.headers = []
        self.content_type = b""
        self.received = False
        return self.waiter

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(conn: _Connection, waiter: asyncio.Future, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", f"no response within {timeout_s:g} s"))
    conn.close()


class Pool:
    """Keep-alive connections to one upstream address (scheme, host, port)."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, max_idle: int, idle_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/").encode()
        self.address = f"{self.scheme}://{self.host}:{self.port}"
        default_port = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._host_line = b"host: " + host_header.encode() + b"\r\n"
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self._idle: list[_Connection] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # connections opened over the pool's life (tests, diagnostics)

    async def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        *,
        timeout_s: float,
        headers: bytes = b"",
        content_type: bytes = b"application/json",
    ) -> Response:
        """Send one request; `headers` is extra raw header lines, each ending in CRLF."""
        payload = b"".join((
            method, b" ", self.base_path, path, b" HTTP/1.1\r\n", self._host_line,
            b"content-type: ", content_type, b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
            headers, b"\r\n", body,
        ))
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, payload, deadline, timeout_s)
            except _Stale:
                pass  # the server closed it while idle and never saw this request: resend once
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamError("timeout", f"no response within {timeout_s:g} s")
        conn = await self._connect(min(remaining, self.connect_timeout_s))
        try:
            return await self._exchange(conn, payload, deadline, timeout_s)
        except _Stale:
            raise UpstreamError("reset", "connection closed before the response started") from None

    async def _exchange(self, conn: _Connection, payload: bytes, deadline: float, timeout_s: float) -> Response:
        waiter = conn.begin()
        assert conn.transport is not None
        # A timer handle rather than asyncio.timeout(): a third of the cost, and expiry only
        # touches this exchange's future and connection.
        timer = self._loop.call_at(deadline, _expire, conn, waiter, timeout_s)  # type: ignore[union-attr]
        conn.transport.write(payload)
        try:
            resp = await waiter
        except BaseException:
            conn.close()  # a connection with an unfinished exchange cannot be reused
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        if conn.keep_alive and not conn.closed and not self._closed and len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return resp

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # most recently used first: warmest, least likely reaped
            if not conn.closed and now - conn.idle_since < self.idle_timeout_s:
                return conn
            conn.close()
        return None

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            raise UpstreamError(
                "connect", f"connect to {self.address} timed out after {timeout_s:.3g} s"
            ) from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {self.address}: {exc.strerror or exc}") from None
        self.opened += 1
        return conn

    def prune(self) -> None:
        """Close idle connections past their idle timeout (called periodically)."""
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if conn.closed or now - conn.idle_since >= self.idle_timeout_s:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle = []

    @property
    def idle_connections(self) -> int:
        return len(self._idle)


class Pools:
    """One `Pool` per upstream address (scheme, host, port, base path), shared by every config
    version that routes there, so a config change keeps warm connections."""

    def __init__(self, *, connect_timeout_s: float, max_idle: int, idle_timeout_s: float) -> None:
        self._options = {"connect_timeout_s": connect_timeout_s, "max_idle": max_idle,
                         "idle_timeout_s": idle_timeout_s}
        self._pools: dict[str, Pool] = {}

    def get(self, url: str) -> Pool:
        key = _address(url)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(url, **self._options)
        return pool

    def retain(self, urls: Iterable[str]) -> None:
        """Close the pools no URL in `urls` uses (idle connections only; requests in flight hold theirs)."""
        keep = {_address(url) for url in urls}
        for key in [k for k in self._pools if k not in keep]:
            self._pools.pop(key).close()

    def prune(self) -> None:
        for pool in self._pools.values():
            pool.prune()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _address(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path.rstrip('/')}"
