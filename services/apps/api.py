"""The consuming application's HTTP API, the same for every backend shape.

    POST /predict   {"instances": [{"<feature>": 1.0, ...}, ...]}   rows by feature name
                    {"instances": [[1.0, 2.0, ...], ...]}           rows in contract order
        200 {"request_id", "model_name", "model_version", "labels", "label_names",
             "probabilities", "out_of_range"}
        400 bad input (body names the field), 413 too large, 415 not Content-Type: application/json,
        503 not ready. `x-request-id`: the client's if it is 1-128 characters of [A-Za-z0-9._:-],
        else a fresh one; echoed as a header and in the body either way.
    GET /healthz    the process is alive
    GET /readyz     200 once the backend can serve, else 503
    GET /metrics    Prometheus text format
    GET /model      the card of the model being served
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.apps import metrics
from services.apps.backend import Backend, ContractCache, PredictionSink
from services.core.contract import RangePolicy
from services.core.errors import InvalidInput, ServingError, Unavailable
from services.core.http import (
    EXCEPTION_HANDLERS,
    JSON_ONLY,
    check_content_type,
    client_request_id,
    json_response,
    parse_json_object,
    read_body,
)
from services.core.http import metrics as metrics_endpoint


def build_app(
    backend: Backend,
    *,
    app_name: str,
    max_body_bytes: int,
    max_batch_size: int,
    range_policy: RangePolicy,
    range_margin: float,
    sinks: tuple[PredictionSink, ...] = (),
    extra_routes: tuple[Route, ...] = (),
) -> Starlette:
    contracts = ContractCache(max_batch_size=max_batch_size, range_policy=range_policy, range_margin=range_margin)
    served: set[tuple[str, int]] = set()

    def note_served(name: str, version: int) -> None:
        # Keep app_model_info pointing at the version in use, without a lookup per request.
        if (name, version) in served:
            return
        for old_name, old_version in served:
            metrics.MODEL_INFO.labels(app_name, old_name, str(old_version)).set(0)
        served.clear()
        served.add((name, version))
        metrics.MODEL_INFO.labels(app_name, name, str(version)).set(1)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        request_id = client_request_id(request.headers.get("x-request-id"))
        card = backend.card if backend.ready else None
        model_name = card.name if card else "unknown"
        try:
            if card is None:
                raise Unavailable("model not loaded yet; retry once /readyz answers 200")
            check_content_type(request.headers.get("content-type"), JSON_ONLY)
            body = parse_json_object(await read_body(request, max_body_bytes))
            if "instances" not in body:
                raise InvalidInput('request body needs "instances": a list of rows', field="instances")
            contract = contracts.for_card(card)
            x = contract.rows_to_array(body["instances"])
            findings = contract.check_ranges(x)
            result = await backend.predict(x)
        except ServingError as exc:
            metrics.REQUESTS.labels(app_name, model_name, "", str(exc.http_status)).inc()
            raise
        version = str(result.model_version)
        note_served(result.model_name, result.model_version)
        for f in findings:
            metrics.OUT_OF_RANGE.labels(app_name, result.model_name, f.feature).inc()
        classes = card.classes
        payload = {
            "request_id": request_id,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "labels": result.labels,
            "label_names": [classes[i] for i in result.labels.tolist()],
            "probabilities": result.probabilities,
            "out_of_range": [f.to_dict() for f in findings],
        }
        metrics.REQUESTS.labels(app_name, result.model_name, version, "200").inc()
        metrics.ROWS.labels(app_name, result.model_name, version).inc(len(result.labels))
        latency_s = time.perf_counter() - started
        metrics.REQUEST_SECONDS.labels(app_name, result.model_name).observe(latency_s)
        for sink in sinks:
            sink.record(request_id, x, result, latency_s)
        return json_response(
            payload, headers={"x-request-id": request_id, "x-model-version": f"{result.model_name}:{version}"}
        )

    async def healthz(_: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(_: Request) -> Response:
        if not backend.ready:
            return json_response({"status": "not ready"}, 503)
        card = backend.card
        return json_response({"status": "ready", "model_name": card.name, "model_version": card.version})

    async def model(_: Request) -> Response:
        if not backend.ready:
            raise Unavailable("model not loaded yet")
        return json_response(backend.card.model_dump())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for sink in sinks:
            await sink.start()
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()
            for sink in sinks:
                await sink.stop()

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/model", model),
            Route("/metrics", metrics_endpoint),
            *extra_routes,  # e.g. POST /feedback (services/apps/feedback.py)
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
