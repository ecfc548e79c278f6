"""The router's HTTP API: a raw ASGI fast path for inference, Starlette for everything else.

    POST /v2/models/{m}[/versions/{v}]/infer   KServe V2 inference, routed by the policy (hot path)
    GET  /v2/models/{m}[/versions/{v}][/ready]  model metadata / readiness, from the fallback variant
    GET  /v2 | /v2/health/live | /v2/health/ready | /healthz | /readyz
    POST /feedback                              {"request_id" | "key", "reward" | "outcome"}
    GET  /experiments/{name}                    A/B report (or the policy state of other policies)
    GET  /policy  (alias /bandit)               policy state: pulls, mean reward, posterior, regret
    GET  /shadow/summary                        shadow comparison
    GET  /admin/routing    PUT /admin/routing   routing config with its version (bearer token)
    GET  /metrics                               Prometheus text format

Inference bypasses Starlette's routing and request objects (about a third of a bare Starlette
endpoint's CPU); the path is matched with two string tests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core.errors import InvalidInput, NotFound, PayloadTooLarge, ServingError
from services.core.http import EXCEPTION_HANDLERS, json_response, parse_json_object, read_body
from services.core.http import metrics as metrics_endpoint
from services.router import metrics
from services.router.service import Router, _send_error

log = logging.getLogger("services.router")

SERVER_NAME = "serving-patterns-router"
SERVER_VERSION = "0.1.0"
_PREFIX = "/v2/models/"
_SUFFIX = "/infer"


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an inference path, or None if the path is not one."""
    rest = path[len(_PREFIX) : -len(_SUFFIX)]
    parts = rest.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def build_app(router: Router) -> Any:
    """The ASGI application. Starting it (lifespan) starts the router; stopping it saves state."""

    async def v2_server(_: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        table = router.table
        ok = router.started and table is not None
        body: dict[str, Any] = {"ready": ok}
        if table is not None:
            body.update(config_version=table.version, policy=table.kind)
        return json_response(body, 200 if ok else 503)

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        tail = "/ready" if request.url.path.endswith("/ready") else ""
        status, body, content_type = await router.model_metadata(p["model"], p.get("version"), tail)
        return Response(body, status_code=status, media_type=content_type.decode("latin-1"))

    async def feedback(request: Request) -> Response:
        try:
            body = parse_json_object(await read_body(request, router.max_body))
            result = router.feedback(body)
        except ServingError as exc:
            metrics.FEEDBACK.labels(exc.code).inc()
            raise
        metrics.FEEDBACK.labels("applied").inc()
        return json_response(result)

    async def experiment(request: Request) -> Response:
        return json_response(router.experiment(request.path_params["name"]))

    async def policy(_: Request) -> Response:
        return json_response(router.policy_status())

    async def shadow_summary(_: Request) -> Response:
        return json_response(router.shadow_summary())

    async def admin_routing(request: Request) -> Response:
        router.check_admin(request.headers.get("authorization"))
        if request.method == "GET":
            table = router.table
            assert table is not None
            return json_response(table.describe(), headers={"ETag": f'"{table.version}"'})
        raw = await _read_text(request, router.max_body)
        result = router.admin_put(raw, request.headers.get("if-match"))
        return json_response(result, headers={"ETag": f'"{result["version"]}"'})

    async def not_found(request: Request) -> Response:
        raise NotFound(f"no such endpoint: {request.method} {request.url.path}", field="path")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    starlette = Starlette(
        routes=[
            Route("/v2", v2_server),
            Route("/v2/health/live", live),
            Route("/healthz", live),
            Route("/v2/health/ready", ready),
            Route("/readyz", ready),
            Route("/v2/models/{model}", model_metadata),
            Route("/v2/models/{model}/ready", model_metadata),
            Route("/v2/models/{model}/versions/{version}", model_metadata),
            Route("/v2/models/{model}/versions/{version}/ready", model_metadata),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/experiments/{name}", experiment),
            Route("/policy", policy),
            Route("/bandit", policy),
            Route("/shadow/summary", shadow_summary),
            Route("/admin/routing", admin_routing, methods=["GET", "PUT"]),
            Route("/metrics", metrics_endpoint),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.endswith(_SUFFIX) and path.startswith(_PREFIX):
                target = _infer_target(path)
                if target is not None and scope["method"] == "POST":
                    try:
                        await router.infer(scope, receive, send, target[0], target[1])
                    except Exception:  # never a stack trace to the client
                        log.exception("unhandled error on the inference path", extra={"path": path})
                        with contextlib.suppress(Exception):  # the response may have started already
                            await _send_error(send, ServingError("internal error; see the router log"), "")
                    return
        await starlette(scope, receive, send)

    return app


async def _read_text(request: Request, limit: int) -> str:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}", field="body")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInput("request body is empty; send the routing config as YAML or JSON", field="body")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"request body is not UTF-8: {exc}", field="body") from None


__all__ = ["build_app"]
