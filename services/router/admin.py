"""The router's operator API: feedback, reports, and the bearer-token-protected routing config.

    POST /feedback                 {"request_id" | "key", "label" | "labels" and/or "reward" | "outcome"},
                                   under every policy (services.router.feedback); bearer token when
                                   ROUTER_FEEDBACK_TOKEN(_FILE) is set (the admin token works too)
    GET  /quality                  per-variant accuracy, mean reward, predicted labels (services.router.quality)
    GET  /experiments/{name}       the policy's report (A/B: counts, rates, verdict; others: their state)
    GET  /policy  (alias /bandit)  policy state, pending feedback per variant, per-variant health;
                                   variants' upstream addresses only with the admin token
    GET  /shadow/summary           shadow comparison (REST and gRPC mirrors alike)
    GET  /admin/routing            the config in force with its version (ETag)        bearer token
    PUT  /admin/routing            replace it (YAML or JSON; If-Match: <version>)       bearer token
    GET  /admin/inputs             the input tap's sampled rows per variant (tap.py)    bearer token

The admin token comes from ROUTER_ADMIN_TOKEN or ROUTER_ADMIN_TOKEN_FILE (re-read per call, so a
rotated Secret applies at once); without one the admin API answers 403 'disabled'.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core.errors import InvalidInput, NotFound, PayloadTooLarge, ServingError, Unauthorized
from services.core.http import json_response, parse_json_object, read_body
from services.router import metrics
from services.router.control import Control
from services.router.dispatch import Dispatcher
from services.router.errors import Forbidden
from services.router.feedback import apply_feedback, prepare_feedback
from services.router.feedback_log import FeedbackLog
from services.router.labels_out import LabelsOut
from services.router.settings import RouterSettings

log = logging.getLogger("services.router")


def admin_token(settings: RouterSettings) -> str | None:
    return _token(settings.admin_token, settings.admin_token_file, "admin")


def feedback_token(settings: RouterSettings) -> str | None:
    return _token(settings.feedback_token, settings.feedback_token_file, "feedback")


def _token(value: Any, path: Path | None, what: str) -> str | None:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            log.error(f"{what} token file unreadable", extra={"path": str(path), "error": str(exc)})
            return None
        return token or None
    return None


def _bearer(authorization: str | None) -> str | None:
    scheme, _, presented = (authorization or "").partition(" ")
    return presented.strip() or None if scheme.lower() == "bearer" else None


def is_admin(settings: RouterSettings, authorization: str | None) -> bool:
    token, presented = admin_token(settings), _bearer(authorization)
    return token is not None and presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def check_feedback_auth(settings: RouterSettings, authorization: str | None) -> None:
    """With a feedback token configured, Unauthorized unless `authorization` carries it (or the admin token)."""
    if settings.feedback_token is None and settings.feedback_token_file is None:
        return
    token, presented = feedback_token(settings), _bearer(authorization)
    if token is None:  # configured but unreadable: closed, not open
        raise Unauthorized("feedback needs a bearer token, and the router's feedback token file is unreadable",
                           field="Authorization")
    if presented is None:
        raise Unauthorized("feedback needs an 'Authorization: Bearer <feedback token>' header",
                           field="Authorization")
    if not hmac.compare_digest(presented.encode(), token.encode()) and not is_admin(settings, authorization):
        raise Unauthorized("invalid feedback token", field="Authorization")


def check_admin(settings: RouterSettings, authorization: str | None) -> None:
    """Raise Forbidden (no token configured) or Unauthorized unless `authorization` carries the token."""
    token = admin_token(settings)
    if token is None:
        raise Forbidden("the admin API is disabled: no admin token is configured "
                        "(set ROUTER_ADMIN_TOKEN or ROUTER_ADMIN_TOKEN_FILE)", field="Authorization")
    if not authorization:
        raise Unauthorized("the admin API needs an 'Authorization: Bearer <token>' header", field="Authorization")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", field="Authorization")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Unauthorized("invalid admin token", field="Authorization")


def experiment(dispatcher: Dispatcher, name: str) -> dict[str, Any]:
    table = dispatcher.table
    assert table is not None
    if name != table.config.name:
        raise NotFound(f"unknown experiment {name!r}; this router runs {table.config.name!r}", field="name")
    return {
        "name": name,
        "policy": table.kind,
        "config_version": table.version,
        "variants": list(table.variants),
        "pending_feedback": dispatcher.pending.variants_pending(),
        "report": table.policy.report(),
    }


def policy_status(dispatcher: Dispatcher, admin: bool = True) -> dict[str, Any]:
    """The policy's state and each variant's health; upstream addresses (`url`, `grpc`) only for
    `admin` (they map the internal network for whoever can reach the router)."""
    table = dispatcher.table
    assert table is not None
    health = dispatcher.detector.snapshot()
    status = {
        "name": table.config.name,
        "kind": table.kind,
        "config_version": table.version,
        "epoch": table.epoch,
        "state": table.policy.state(),
        "pending_feedback": dispatcher.pending.variants_pending(),
        "variants": {
            name: {"url": v.cfg.url, "grpc": v.grpc, "model": v.model, "version": v.version,
                   "timeout_s": v.timeout_s, "fallback": v is table.fallback,
                   **health.get(name, {"ejected": False, "consecutive_failures": 0})}
            for name, v in table.variants.items()
        },
    }
    if not admin:
        for variant in status["variants"].values():
            del variant["url"], variant["grpc"]
        status["upstreams"] = "hidden: send the admin bearer token to see each variant's url and grpc address"
    return status


def shadow_summary(dispatcher: Dispatcher) -> dict[str, Any]:
    table = dispatcher.table
    assert table is not None
    return {"policy": table.kind, "config_version": table.version,
            "shadow_variants": [v.name for v in table.shadows], **dispatcher.mirrors.summary()}


def quality(dispatcher: Dispatcher) -> dict[str, Any]:
    table = dispatcher.table
    assert table is not None
    return {"policy": table.kind, "config_version": table.version,
            "shadow_variants": [v.name for v in table.shadows],
            "variants": dispatcher.quality.summary(list(table.variants))}


def routes(dispatcher: Dispatcher, control: Control, settings: RouterSettings,
           feedback_log: FeedbackLog | None = None, labels_out: LabelsOut | None = None) -> list[Route]:
    """The operator endpoints as Starlette routes (errors leave through core.http's handlers).
    With a `feedback_log`, accepted feedback goes through the feedback topic (`feedback_log.py`);
    with `labels_out`, accepted labels go to the labels topic too (`labels_out.py`)."""

    async def feedback(request: Request) -> Response:
        status = 200
        try:
            check_feedback_auth(settings, request.headers.get("authorization"))
            body = _feedback_body(await read_body(request, settings.max_body_bytes))
            table = dispatcher.table
            assert table is not None
            if feedback_log is None:
                result = apply_feedback(table, dispatcher.pending, dispatcher.quality, body, dispatcher.tokens)
            else:
                fb = prepare_feedback(table, dispatcher.pending, dispatcher.quality, body, dispatcher.tokens)
                status, result = await feedback_log.submit(fb, body)
        except ServingError as exc:
            metrics.FEEDBACK.labels(exc.code).inc()
            raise
        dispatcher.dirty = True
        metrics.FEEDBACK.labels("applied" if status == 200 else "acknowledged").inc()
        if labels_out is not None:  # accepted here: this replica writes the label, once
            labels_out.forward(result["request_id"], body, dispatcher.tokens)
        return json_response(result, status)

    async def experiment_report(request: Request) -> Response:
        return json_response(experiment(dispatcher, request.path_params["name"]))

    async def policy(request: Request) -> Response:
        return json_response(policy_status(dispatcher, is_admin(settings, request.headers.get("authorization"))))

    async def shadow(_: Request) -> Response:
        return json_response(shadow_summary(dispatcher))

    async def quality_view(_: Request) -> Response:
        return json_response(quality(dispatcher))

    async def admin_routing(request: Request) -> Response:
        check_admin(settings, request.headers.get("authorization"))
        if request.method == "GET":
            table = control.table
            return json_response(table.describe(), headers={"ETag": f'"{table.version}"'})
        raw = await _read_text(request, settings.admin_max_body_bytes)
        result = control.admin_put(raw, request.headers.get("if-match"))
        return json_response(result, headers={"ETag": f'"{result["version"]}"'})

    async def admin_inputs(request: Request) -> Response:
        check_admin(settings, request.headers.get("authorization"))
        raw_limit = request.query_params.get("limit")
        try:
            limit = int(raw_limit) if raw_limit is not None else None
        except ValueError:
            limit = None
        if raw_limit is not None and (limit is None or limit < 1):
            raise InvalidInput(f"limit: expected a positive whole number of rows, got {raw_limit!r}", field="limit")
        return json_response(dispatcher.tap.read(request.query_params.get("variant"), limit))

    return [
        Route("/admin/inputs", admin_inputs),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/experiments/{name}", experiment_report),
        Route("/policy", policy),
        Route("/bandit", policy),
        Route("/shadow/summary", shadow),
        Route("/quality", quality_view),
        Route("/admin/routing", admin_routing, methods=["GET", "PUT"]),
    ]


def _feedback_body(raw: bytes) -> dict[str, Any]:
    """The feedback JSON object. NaN, Infinity and numbers too large for a double (strict JSON
    parsers refuse them) are read as the values they mean, so the field they sit in is named in
    the 400 (`reward: must be finite`), not just "invalid JSON"."""
    try:
        return parse_json_object(raw)
    except InvalidInput as strict:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting deeper than ~1000
            data = None
        if not isinstance(data, dict):
            raise strict from None
        return data


async def _read_text(request: Request, limit: int) -> str:
    """The body as text (a routing config is YAML, which core.http's JSON readers would misname)."""
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
