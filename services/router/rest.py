"""The REST codec: KServe V2 over HTTP in, the dispatcher, KServe V2 over HTTP out.

    POST /v2/models/{m}[/versions/{v}]/infer   routed by the policy (the hot path, raw ASGI)
    GET  /v2/models/{m}[/versions/{v}][/ready]  model metadata / readiness, from the variant serving
                                                that version (default: the fallback variant)
    GET  /v2 | /v2/health/live | /v2/health/ready | /healthz | /readyz
    GET  /metrics                               Prometheus text format
    ...  the operator endpoints of services.router.admin

Inference bypasses Starlette's routing and request objects (about a third of a bare Starlette
endpoint's CPU); the path is matched with two string tests. The body is forwarded as bytes and
parsed only when the stickiness key comes from it. The answer gets `"variant"` and
`"request_id"` spliced into its JSON and the headers `x-request-id`, `x-variant`,
`x-model-version`; a variant's 4xx passes through with those headers. The router's own errors
leave through `services.core.http.error_response`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse
from starlette.routing import Route

from services.core.errors import InvalidInput, NotFound, ServingError, Unavailable
from services.core.http import EXCEPTION_HANDLERS, error_response, exception_response, json_response, receive_body
from services.core.http import metrics as metrics_endpoint
from services.router import admin
from services.router.dispatch import Dispatcher, Request
from services.router.service import Router
from services.router.settings import SERVER_NAME, SERVER_VERSION
from services.router.shadow import Outputs
from services.router.table import Variant
from services.router.upstream import Response, UpstreamError

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_JSON = b"application/json"
_MODEL_VERSION = re.compile(rb'"model_version"\s*:\s*"?([^",}\s]+)')
_FORWARDED = (b"inference-header-content-length", b"traceparent", b"tracestate")
_SHADOW = b"x-shadow: 1\r\n"


class RestRequest(Request):
    """A KServe V2 inference request: the body as sent, and the header lines forwarded with it."""

    __slots__ = ("body", "headers", "content_type")

    def __init__(self, model: str, version: str | None, request_id: str, key: str | None, override: str | None,
                 body: bytes, headers: bytes, content_type: bytes) -> None:
        # Every field set here: one call per request on the hot path.
        self.model = model
        self.version = version
        self.request_id = request_id
        self.key = key
        self.override = override
        self.body = body
        self.headers = headers
        self.content_type = content_type


class RestUpstream:
    """Variants called over HTTP/1.1 with kept-alive connections (services.router.upstream)."""

    async def call(self, variant: Variant, request: RestRequest) -> Response:
        resp = await variant.pool.request(b"POST", variant.infer_path, request.body, timeout_s=variant.timeout_s,
                                          headers=request.headers, content_type=request.content_type)
        if resp.status >= 500:
            raise _failure(resp)
        return resp

    async def mirror(self, variant: Variant, request: RestRequest, timeout_s: float) -> Response:
        resp = await variant.pool.request(b"POST", variant.infer_path, request.body, timeout_s=timeout_s,
                                          headers=request.headers + _SHADOW, content_type=request.content_type)
        if resp.status >= 500:
            raise _failure(resp)
        return resp

    def outputs(self, body: bytes) -> Outputs | None:
        return v2_outputs(body)


def _failure(resp: Response) -> UpstreamError:
    snippet = resp.body[:200].decode("utf-8", "replace")
    return UpstreamError(f"http_{resp.status // 100}xx", f"answered HTTP {resp.status}: {snippet}")


def build_app(router: Router) -> Any:
    """The ASGI application over a started router (the process starts and stops it: `__main__.py`)."""
    dispatcher, control, settings = router.dispatcher, router.control, router.settings
    upstream = RestUpstream()
    max_body = settings.max_body_bytes

    async def infer(scope: dict[str, Any], receive: Any, send: Any, model: str, version: str | None) -> None:
        table = dispatcher.table
        assert table is not None
        given = override = key = declared = None
        content_type = _JSON
        forwarded = b""
        override_header, sticky_header = table.override_header, table.sticky_header
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == override_header:
                override = value
            elif name == sticky_header:
                key = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                declared = value
            elif name in _FORWARDED:
                forwarded += name + b": " + value + b"\r\n"
        rid = dispatcher.request_id(given.decode("latin-1") if given else None)
        try:
            body = await receive_body(receive, declared, max_body)
            if body is None:
                raise InvalidInput("client disconnected before sending the body", field="body")
        except ServingError as exc:
            table.unrouted.request(exc.http_status)
            await _send_error(scope, send, exc, rid)
            return
        sticky = key.decode("latin-1") if key else None
        if sticky is None and table.body_parameter is not None:
            sticky = _body_key(body, table.body_parameter)
        request = RestRequest(model, version, rid, sticky, override.decode("latin-1") if override else None, body,
                              b"x-request-id: " + rid.encode() + b"\r\n" + forwarded, content_type)
        try:
            routed = await dispatcher.dispatch(table, request, upstream)
        except ServingError as exc:
            await _send_error(scope, send, exc, rid)
            return
        served, resp, _ = routed
        out_body, out_headers = _annotate(resp, served, request.reply_id)
        if request.token is not None:
            out_headers.append((b"x-feedback-token", request.token.encode()))
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})
        if table.shadows:
            dispatcher.mirror(table, request, upstream, routed)

    async def v2_server(_: HttpRequest) -> HttpResponse:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    async def live(_: HttpRequest) -> HttpResponse:
        return json_response({"live": True})

    async def ready(_: HttpRequest) -> HttpResponse:
        table = dispatcher.table
        ok = router.ready and table is not None
        body: dict[str, Any] = {"ready": ok}
        if table is not None:
            body.update(config_version=table.version, policy=table.kind)
        return json_response(body, 200 if ok else 503)

    async def model_metadata(request: HttpRequest) -> HttpResponse:
        p = request.path_params
        tail = "/ready" if request.url.path.endswith("/ready") else ""
        status, body, content_type = await _model_metadata(dispatcher, p["model"], p.get("version"), tail)
        return HttpResponse(body, status_code=status, media_type=content_type.decode("latin-1"))

    async def not_found(request: HttpRequest) -> HttpResponse:
        raise NotFound(f"no such endpoint: {request.method} {request.url.path}", field="path")

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
            *admin.routes(dispatcher, control, settings, router.feedback_log, router.labels_out),
            Route("/metrics", metrics_endpoint),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.endswith(_SUFFIX) and path.startswith(_PREFIX):
                target = _infer_target(path)
                if target is not None and scope["method"] == "POST":
                    try:
                        await infer(scope, receive, send, target[0], target[1])
                    except Exception as exc:  # logged; never a stack trace to the client
                        with contextlib.suppress(Exception):  # the response may have started already
                            await exception_response(exc, path)(scope, receive, send)
                    return
        await starlette(scope, receive, send)

    return app


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an inference path, or None if the path is not one."""
    rest = path[len(_PREFIX) : -len(_SUFFIX)]
    parts = rest.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


async def _send_error(scope: dict[str, Any], send: Any, exc: ServingError, rid: str) -> None:
    exc.details.setdefault("request_id", rid)  # the handle a client quotes when it reports the failure
    response = error_response(exc)
    response.headers["x-request-id"] = rid
    await response(scope, _no_receive, send)


async def _no_receive() -> dict[str, Any]:  # pragma: no cover - a sent response never reads
    return {"type": "http.disconnect"}


async def _model_metadata(dispatcher: Dispatcher, model: str, version: str | None,
                          tail: str) -> tuple[int, bytes, bytes]:
    """Metadata / readiness of the variant serving `version` (default: the fallback variant)."""
    table = dispatcher.table
    assert table is not None
    variant = table.metadata_variant(model, version)
    try:
        resp = await variant.pool.request(b"GET", variant.metadata_path(tail), timeout_s=variant.timeout_s)
    except UpstreamError as exc:
        raise Unavailable(f"variant {variant.name!r}: {exc.message}") from None
    return resp.status, resp.body, resp.content_type or _JSON


def _body_key(body: bytes, parameter: str) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the model server names the JSON problem
    params = doc.get("parameters") if isinstance(doc, dict) else None
    value = params.get(parameter) if isinstance(params, dict) else None
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def _annotate(resp: Response, served: Variant, rid: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The answer with `variant` and `request_id` spliced into its JSON, and the router's headers."""
    body = resp.body
    content_type = resp.content_type or _JSON
    headers = [(b"content-type", content_type), (b"x-request-id", rid.encode()), (b"x-variant", served.name.encode())]
    model_version = served.model_version
    if resp.status < 300:
        header_len = None
        for name, value in resp.headers:
            if name == b"inference-header-content-length":
                header_len = int(value) if value.isdigit() else None
        json_part = body if header_len is None else body[:header_len]
        if header_len is not None or content_type.startswith(_JSON):
            found = _MODEL_VERSION.search(json_part, 0, 400)
            if found is not None:  # the version that actually answered (a label may have moved)
                model_version = served.model_prefix + found.group(1)
            spliced = _splice(json_part, served.name, rid)
            if spliced is not None:
                if header_len is None:
                    body = spliced
                else:
                    body = spliced + body[header_len:]
                    headers.append((b"inference-header-content-length", str(len(spliced)).encode()))
    headers.append((b"x-model-version", model_version))
    return body, headers


def _splice(doc: bytes, variant: str, rid: str) -> bytes | None:
    """Add "variant" and "request_id" as the last members of a JSON object (they win over any
    same-named member for last-wins parsers); None when `doc` is not an object."""
    end = doc.rstrip()
    if not end.endswith(b"}") or not doc.lstrip().startswith(b"{"):
        return None
    fields = b'"variant":' + orjson.dumps(variant) + b',"request_id":' + orjson.dumps(rid) + b"}"
    inner = end[:-1].rstrip()
    if inner.endswith(b"{"):
        return inner + fields
    return inner + b"," + fields


def v2_outputs(body: bytes) -> Outputs | None:
    """Labels and probabilities of a KServe V2 JSON answer (None: not JSON, binary, no label output)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        return None
    by_name = {o["name"]: o for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str) and "data" in o}
    if "label" not in by_name:
        return None
    labels = _flat(by_name["label"]["data"])
    if labels is None:
        return None
    probabilities = _flat(by_name["probabilities"]["data"]) if "probabilities" in by_name else None
    return labels, probabilities


def _flat(data: Any) -> list | None:
    """A KServe V2 `data` field as a flat list (it may be flat or nested by the shape)."""
    if not isinstance(data, list):
        return None
    if data and isinstance(data[0], list):
        out: list = []
        for item in data:
            nested = _flat(item) if isinstance(item, list) else None
            if nested is None:
                return None
            out += nested
        return out
    return data


__all__ = ["build_app", "v2_outputs"]
