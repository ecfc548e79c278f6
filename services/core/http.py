"""HTTP plumbing shared by the services: JSON in and out, errors to the wire, serving a process.

`exception_response` is the one place an exception becomes an HTTP response: a `ServingError`
through `error_response` (its status and JSON body), anything else a 500 with a generic body and a
logged trace; a client never sees a trace. Starlette apps get it through `EXCEPTION_HANDLERS`;
bare ASGI handlers (a hot path that skips Starlette's router) call it directly.

`serve(app, settings, ...)` runs a service process: the app under uvicorn, optionally beside other
servers (grpc.aio), with one graceful drain on SIGTERM / SIGINT and exit status 0. Its HTTP
connections are bounded by the settings' `http_*` fields (header timeout, keep-alive, header size,
connections per process: `services.core.connections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import orjson
import uvicorn
import uvloop
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from services.core.connections import ConnectionLimits, bounded_protocol
from services.core.errors import (
    INTERNAL_MESSAGE,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
    echo,
)
from services.core.settings import ServiceSettings

log = logging.getLogger(__name__)
# `_created` series double the exposition size and no dashboard here reads them.
disable_created_metrics()
_JSON = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=_JSON, headers=headers)


def error_response(exc: ServingError) -> Response:
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return json_response(exc.to_dict(), exc.http_status, headers)


async def receive_body(receive: Any, declared: bytes | str | None, max_bytes: int) -> bytes | None:
    """The raw body from an ASGI `receive`; 413 past `max_bytes` (checked against the declared
    Content-Length first, then while reading); 400 when empty; None if the client disconnected."""
    if isinstance(declared, bytes):
        declared = declared.decode("latin-1")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes}", field="body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes", field="body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not body:
        raise InvalidInput("request body is empty; send a JSON object", field="body")
    return body


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body of a Starlette request (see `receive_body`)."""
    body = await receive_body(request.receive, request.headers.get("content-length"), max_bytes)
    if body is None:
        raise InvalidInput("client disconnected before sending the whole body", field="body")
    return body


# -- what a client sends beside the body -----------------------------------------------------

JSON_ONLY = frozenset({"application/json"})
"""Media types of a JSON API of this project's own (the apps' /predict): JSON, nothing else."""
PROTOCOL_BODIES = frozenset({"application/json", "application/octet-stream", "application/x-www-form-urlencoded"})
"""Media types the KServe V2 and TF Serving REST endpoints accept, as the reference servers do (they
ignore Content-Type): JSON; octet-stream (Triton's binary tensor extension; aiohttp's default for
bytes, used by tritonclient.http.aio); form-urlencoded, which is only `curl -d`'s default label on a
JSON body (the protocols' documented examples send it). A missing Content-Type is accepted too
(tritonclient.http sends none). Anything else (text/plain, multipart/form-data, ...) is refused."""


def check_content_type(value: bytes | str | None, accepted: frozenset[str], *, missing_ok: bool = False) -> None:
    """UnsupportedMediaType (415) unless `value`'s media type is in `accepted` or ends in `+json`
    (when JSON is accepted); parameters such as `; charset=utf-8` are ignored."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None or not value.strip():
        if missing_ok:
            return
        raise UnsupportedMediaType(f"the request body needs 'Content-Type: {min(accepted)}'", field="Content-Type")
    media = value.split(";", 1)[0].strip().lower()
    if media in accepted or ("application/json" in accepted and media.startswith("application/")
                             and media.endswith("+json")):
        return
    raise UnsupportedMediaType(f"Content-Type {echo(media)} is not supported; send the body as "
                               f"{' or '.join(sorted(accepted))}", field="Content-Type")


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(given: bytes | str | None) -> str:
    """The client's `x-request-id` when it is 1-128 characters of [A-Za-z0-9._:-], else a fresh id.
    A malformed id is replaced, not refused: it only correlates logs, and the id in force is echoed
    (header and body), so the client still learns which id its request ran under."""
    if isinstance(given, bytes):
        given = given.decode("latin-1")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def parse_json_object(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", field="body") from exc
    return require_json_object(data)


def exception_response(exc: Exception, path: str = "") -> Response:
    """The response for any exception a handler raised (see the module docstring)."""
    if isinstance(exc, ServingError):
        if exc.http_status >= 500:
            log.warning("request failed", extra={"error": exc.message, "code": exc.code, "path": path})
        return error_response(exc)
    log.error("unhandled error", exc_info=exc, extra={"path": path})
    return json_response({"error": INTERNAL_MESSAGE, "code": "internal"}, 500)


async def _handle(request: Request, exc: Exception) -> Response:
    return exception_response(exc, request.url.path)


_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no route: 404, wrong method: 405) as JSON errors like every other,
    instead of its plain-text "Not Found" (clients and fuzzers expect `{"error": ...}`)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    what = "no such endpoint" if status == 404 else f"method {request.method} not allowed here"
    return json_response({"error": f"{what}: {request.method} {request.url.path[:200]}",
                          "code": _ROUTING_CODES.get(status, "http_error"), "field": "path"},
                         status, headers=exc.headers)


# Both keys: Starlette routes ServingError (any status) through its exception middleware and
# everything else through its server-error middleware; both end in `exception_response`.
# HTTPException: Starlette's routing answers (404, 405).
EXCEPTION_HANDLERS = {ServingError: _handle, HTTPException: _routing_error, Exception: _handle}


async def metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def require_json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(body).__name__}", field="body")
    return body


# -- serving a process ----------------------------------------------------------------------


class Server(Protocol):
    """A server `serve` runs beside the HTTP one, e.g. a grpc.aio server wrapped with its health."""

    async def start(self) -> None:
        """Bind and start serving (called on the running loop, before the HTTP port opens)."""

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; let in-flight ones finish within `grace_s`."""


Hook = Callable[[], Awaitable[None]]


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` handles SIGTERM/SIGINT once, on the loop, for
    every server (uvicorn's handler would race it, and re-raise the signal after draining, so a
    process that drained cleanly would still die "by signal" instead of exiting 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[Any] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            # uvicorn calls sys.exit when its lifespan fails or its port is taken, which would end the
            # process without draining the other servers or running the stop hooks: end serve() instead.
            self.should_exit = True


def serve(app: ASGIApp, settings: ServiceSettings, *, servers: Sequence[Server] = (),
          on_start: Sequence[Hook] = (), on_stop: Sequence[Hook] = (),
          stopping: asyncio.Event | None = None) -> None:
    """Run a service process on one uvloop event loop until SIGTERM or SIGINT; exit 0 when it drained.

    Start: `on_start` hooks in order (e.g. load models), then each of `servers`, then the app under
    uvicorn (its lifespan, if any, then the HTTP port). Stop: `stopping` is set (readiness can turn
    503 on it), uvicorn and every server stop accepting and drain in-flight requests concurrently
    within `settings.shutdown_grace_s`, then `on_stop` hooks run in order (e.g. unload models).
    A hook or server that fails to start, or uvicorn ending on its own, stops the rest and exits 1.
    """
    status = uvloop.run(_serve(app, settings, servers, on_start, on_stop, stopping or asyncio.Event()))
    if status:
        raise SystemExit(status)


async def _serve(app: ASGIApp, settings: ServiceSettings, servers: Sequence[Server], on_start: Sequence[Hook],
                 on_stop: Sequence[Hook], stopping: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    grace_s = settings.shutdown_grace_s
    started: list[Server] = []
    try:
        for hook in on_start:
            await hook()
        for server in servers:
            await server.start()
            started.append(server)
    except Exception as exc:
        log.error("start-up failed; stopping", exc_info=exc)
        await _stop(started, on_stop, grace_s)
        return 1

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(connection_limits(settings)),  # httptools, with header timeout and limits
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.http_keep_alive_s,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]  # a float works; the hint says int
    )
    http = _Uvicorn(config)
    http_task = asyncio.create_task(http.serve(), name="http")
    signal_task = asyncio.create_task(stopping.wait(), name="signal")
    await asyncio.wait({http_task, signal_task}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if http_task.done():  # uvicorn ended on its own: its lifespan failed, or it crashed
        log.error("HTTP server stopped unexpectedly; shutting down")
        status = 1
    stopping.set()
    signal_task.cancel()
    log.info("shutting down: no new requests; finishing in-flight ones", extra={"grace_s": grace_s})
    http.should_exit = True
    results = await asyncio.gather(http_task, *(s.stop(grace_s) for s in started), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("a server failed while stopping", exc_info=result)
            status = status or 1
    if not await _run_hooks(on_stop):
        status = status or 1
    log.info("stopped", extra={"exit_status": status})
    return status


def connection_limits(settings: ServiceSettings) -> ConnectionLimits:
    return ConnectionLimits(header_timeout_s=settings.http_header_timeout_s,
                            max_header_bytes=settings.http_max_header_bytes,
                            max_connections=settings.http_max_connections)


async def _stop(servers: Sequence[Server], on_stop: Sequence[Hook], grace_s: float) -> None:
    await asyncio.gather(*(s.stop(grace_s) for s in servers), return_exceptions=True)
    await _run_hooks(on_stop)


async def _run_hooks(hooks: Sequence[Hook]) -> bool:
    """Every hook runs even if one fails; False if any failed."""
    ok = True
    for hook in hooks:
        try:
            await hook()
        except Exception as exc:
            log.error("stop hook failed", exc_info=exc)
            ok = False
    return ok
