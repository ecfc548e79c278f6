"""A KServe V2 (Open Inference Protocol) REST face for the streaming app, so the router can route to it.

    POST /v2/models/{model}/infer     {"inputs": [{"name": "input", "shape": [n, F], "datatype": "FP32",
                                                   "data": [...]}]}      (flat or nested data)
        200 {"model_name", "model_version", "id", "outputs": [label INT64 [n], probabilities FP32 [n, k]]}
    GET  /v2/health/live | /v2/health/ready | /v2/models/{model} | /v2/models/{model}/ready

Why: the online-learning pattern puts two streaming apps behind the router (a stable one pinned
to a version, a candidate following the trainer's newest), and the router and the supervisor
speak V2 to their variants. Only what the router needs is here: one FP32 input, JSON, no binary
extension, no versioned paths (the app serves whichever version it follows; every answer names
it in `model_version` and `x-model-version`, which the router's metrics and the supervisor read).
The rows go through the same `InputContract` as `POST /predict`, and each answer goes to the same
sinks (the prediction log, keyed by the `x-request-id` the router sends).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.apps import metrics
from services.apps.backend import Backend, ContractCache, PredictionSink
from services.core.errors import InvalidInput, NotFound, ServingError, Unavailable
from services.core.http import (
    JSON_ONLY,
    check_content_type,
    client_request_id,
    json_response,
    parse_json_object,
    read_body,
)


def v2_routes(backend: Backend, *, app_name: str, contracts: ContractCache, max_body_bytes: int,
              sinks: tuple[PredictionSink, ...] = ()) -> tuple[Route, ...]:
    def served_card(model: str):
        if not backend.ready:
            raise Unavailable("model not loaded yet")
        card = backend.card
        if model != card.name:
            raise NotFound(f"model {model!r} is not served here; this app serves {card.name!r}", field="model")
        return card

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        request_id = client_request_id(request.headers.get("x-request-id"))
        card = served_card(request.path_params["model"])
        try:
            check_content_type(request.headers.get("content-type"), JSON_ONLY)
            body = parse_json_object(await read_body(request, max_body_bytes))
            contract = contracts.for_card(card)
            x = contract.check_array(_input_matrix(body, card.n_features, contract.check_batch), "inputs[0]")
            result = await backend.predict(x)
        except ServingError as exc:
            metrics.REQUESTS.labels(app_name, card.name, "", str(exc.http_status)).inc()
            raise
        version = str(result.model_version)
        labels = np.asarray(result.labels, dtype=np.int64)
        proba = np.asarray(result.probabilities, dtype=np.float32)
        metrics.REQUESTS.labels(app_name, result.model_name, version, "200").inc()
        metrics.ROWS.labels(app_name, result.model_name, version).inc(len(labels))
        latency_s = time.perf_counter() - started
        metrics.REQUEST_SECONDS.labels(app_name, result.model_name).observe(latency_s)
        for sink in sinks:
            sink.record(request_id, x, result, latency_s)
        payload = {
            "model_name": result.model_name,
            "model_version": version,
            "id": body.get("id") if isinstance(body.get("id"), str) else request_id,
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [len(labels)], "data": labels},
                {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape), "data": proba.ravel()},
            ],
        }
        return json_response(payload, headers={"x-request-id": request_id,
                                               "x-model-version": f"{result.model_name}:{version}"})

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        return json_response({"ready": backend.ready}, 200 if backend.ready else 503)

    async def model_metadata(request: Request) -> Response:
        card = served_card(request.path_params["model"])
        if request.url.path.endswith("/ready"):
            return json_response({"name": card.name, "ready": True})
        return json_response({
            "name": card.name, "versions": [str(card.version)], "platform": "onnxruntime",
            "inputs": [{"name": card.input.name, "datatype": "FP32", "shape": [-1, card.n_features]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(card.classes)]}],
        })

    return (
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/ready", model_metadata),
    )


def _input_matrix(body: dict[str, Any], n_features: int, check_batch: Callable[[int, str], None]) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput('"inputs" must be a list of one tensor: the FP32 input', field="inputs")
    tensor = inputs[0]
    if tensor.get("datatype") not in ("FP32", "FP64"):
        raise InvalidInput(f"inputs[0].datatype {tensor.get('datatype')!r}: FP32 expected", field="inputs[0].datatype")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                                                  for d in shape)
            or shape[1] != n_features or shape[0] < 1):
        raise InvalidInput(f"inputs[0].shape {shape!r}: [rows, {n_features}] expected", field="inputs[0].shape")
    check_batch(shape[0], "inputs[0].shape")  # before anything is allocated for the rows
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput("inputs[0].data must be a list of numbers", field="inputs[0].data")
    try:
        flat = np.asarray(data, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise InvalidInput("inputs[0].data must hold numbers only", field="inputs[0].data") from exc
    if flat.size != shape[0] * shape[1]:
        raise InvalidInput(f"inputs[0].data has {flat.size} values; shape {shape} needs {shape[0] * shape[1]}",
                           field="inputs[0].data")
    return flat.reshape(shape[0], shape[1])
