"""HTTP plumbing shared by the services: JSON in and out, errors to the wire, serving.

`error_response` is the one place a `ServingError` becomes an HTTP response. Unexpected
exceptions become a 500 with a generic body and a logged trace; a client never sees a trace.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from services.core.errors import InvalidInput, Overloaded, PayloadTooLarge, ServingError
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


def parse_json_object(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", field="body") from exc
    return require_json_object(data)


async def _serving_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    if exc.http_status >= 500:
        log.warning("request failed", extra={"error": exc.message, "code": exc.code})
    return error_response(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return json_response({"error": "internal error; see the server log", "code": "internal"}, 500)


EXCEPTION_HANDLERS = {ServingError: _serving_error, Exception: _unexpected}


async def metrics(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def require_json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(body).__name__}", field="body")
    return body


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured SIGTERM after its graceful shutdown, so a process that
        # drained cleanly would still die "by signal"; Kubernetes and our tests read exit 0.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(app: Starlette, settings: ServiceSettings) -> None:
    """Run under uvicorn; SIGTERM stops accepting and drains in-flight requests, then exits 0."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    _Server(config).run()
