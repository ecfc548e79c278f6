"""REST front-end: KServe V2 / Open Inference Protocol, TF Serving's REST API, /metrics.

KServe V2 (what KServe, Triton and MLServer speak; `tritonclient.http` works unchanged):

    GET  /v2                                         server metadata
    GET  /v2/health/live | /v2/health/ready          200, or 503 until a model version serves
    GET  /v2/models/{m}[/versions/{v}]               model metadata (inputs, outputs, loaded versions)
    GET  /v2/models/{m}[/versions/{v}]/ready         200, 404 unknown, 503 not loaded
    POST /v2/models/{m}[/versions/{v}]/infer         inference

    {v} is a version number or, as an extension, a label from the model's config.yaml.
    Request:  {"id": "...", "inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32",
               "data": [...]}], "outputs": [{"name": "label"}], "parameters": {...}}
              datatype FP32, FP64 or INT64; data flat (row-major) or nested.
    Response: {"model_name", "model_version", "id", "outputs": [
               {"name": "label", "datatype": "INT64", "shape": [2], "data": [...]},
               {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [...]}]}
    The binary tensor extension (Triton's, tritonclient's default) is supported both ways:
    `Inference-Header-Content-Length` + `parameters.binary_data_size` for inputs,
    `binary_data` / `binary_data_output` for outputs.

TF Serving REST:

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]             version status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata    signature_def
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict     {"instances": [...]} or {"inputs": ...}

Bodies are JSON (or Triton's binary extension); a Content-Type that is neither (text/plain,
multipart/form-data, ...) gets 415 (`services.core.http.PROTOCOL_BODIES` lists what is accepted,
including none). The request `id` (echoed in the answer) is a string of at most 256 characters.

Errors are `{"error": "...", "code": "...", "field": "..."}` with 400 / 404 / 413 / 415 / 503 (+ Retry-After);
the one place they become responses is `services.core.http` (`exception_response`). Inference goes
through the shared path of every protocol, `services.model_server.dispatch`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from services.core.errors import MAX_NAME_CHARS, InvalidInput, NotFound, echo
from services.core.http import (
    EXCEPTION_HANDLERS,
    PROTOCOL_BODIES,
    check_content_type,
    exception_response,
    json_response,
    parse_json_object,
    read_body,
    receive_body,
)
from services.core.http import metrics as metrics_endpoint
from services.model_server.dispatch import Call, version_number
from services.model_server.metadata import (
    OUTPUT_DATATYPES,
    OUTPUTS,
    SERVER_NAME,
    SERVER_VERSION,
    cached_v2_metadata,
)
from services.model_server.repository import Registry, Servable

_V2_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
_V2_KINDS = {"FP32": "iuf", "FP64": "iuf", "INT64": "iu"}  # numpy kinds accepted in JSON data


# -- request plumbing -----------------------------------------------------------------------


def _version_or_label(raw: str | None) -> tuple[int | None, str | None]:
    if raw is None:
        return None, None
    version = version_number(raw)
    return (version, None) if version is not None else (None, raw)


# -- KServe V2 inference --------------------------------------------------------------------


def _shape(raw: Any, field: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidInput(f"{field} must be a list of non-negative integers, got {raw!r}", field=field)
    return raw


def v2_input_array(body: dict[str, Any], servable: Servable, binary: memoryview | None) -> np.ndarray:
    """The request's input tensor as an array of its datatype and shape, or InvalidInput naming the
    problem; the model's input contract is checked on the shared path (`Call.infer`)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty list of tensors', field="inputs")
    expected = servable.card.input.name
    if len(inputs) != 1:
        names = [t.get("name") if isinstance(t, dict) else None for t in inputs]
        raise InvalidInput(f"the model takes one input tensor {expected!r}; got {len(inputs)}: {names}",
                           field="inputs")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[0] must be a tensor object, got {type(tensor).__name__}", field="inputs[0]")
    name = tensor.get("name")
    if name != expected:
        raise InvalidInput(f"unknown input {name!r}; the model's input is {expected!r}", field="inputs[0].name")
    datatype = tensor.get("datatype")
    dtype = _V2_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"inputs[0].datatype {datatype!r} is not supported; use FP32, FP64 or INT64",
                           field="inputs[0].datatype")
    shape = _shape(tensor.get("shape"), "inputs[0].shape")
    count = math.prod(shape)
    params = tensor.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        arr = _binary_input(binary, size, dtype, count, datatype, shape)
    else:
        data = tensor.get("data")
        if data is None:
            raise InvalidInput('inputs[0] has no "data" (nor binary_data_size)', field="inputs[0].data")
        try:
            arr = np.asarray(data)
        except ValueError as exc:
            raise InvalidInput(f"inputs[0].data is not a regular numeric array: {exc}", field="inputs[0].data") from exc
        if arr.dtype.kind not in _V2_KINDS[datatype]:
            what = "integers" if datatype == "INT64" else "numbers"
            raise InvalidInput(f"inputs[0].data must hold {what} for datatype {datatype}, got {arr.dtype.name} values",
                               field="inputs[0].data")
        if arr.size != count:
            raise InvalidInput(f"inputs[0].data has {arr.size} values; shape {shape} needs {count}",
                               field="inputs[0].data")
        if arr.shape != tuple(shape):
            arr = arr.reshape(shape)
    return arr


def _binary_input(binary: memoryview | None, size: Any, dtype: type, count: int, datatype: str,
                  shape: list[int]) -> np.ndarray:
    if binary is None:
        raise InvalidInput("inputs[0] declares binary_data_size but the request has no binary part "
                           "(Inference-Header-Content-Length missing)", field="inputs[0].parameters")
    itemsize = np.dtype(dtype).itemsize
    if not isinstance(size, int) or size != count * itemsize or size > len(binary):
        raise InvalidInput(
            f"inputs[0]: binary_data_size {size!r} does not match {datatype} shape {shape} "
            f"({count * itemsize} bytes) or the {len(binary)} bytes sent",
            field="inputs[0].parameters.binary_data_size",
        )
    return np.frombuffer(binary[:size], dtype=dtype).reshape(shape)


def v2_request_id(body: dict[str, Any]) -> None:
    """The request's `id` is echoed in the answer: a string of at most MAX_NAME_CHARS, or absent."""
    rid = body.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_NAME_CHARS):
        what = f"{len(rid)} characters" if isinstance(rid, str) else type(rid).__name__
        raise InvalidInput(f'"id" must be a string of at most {MAX_NAME_CHARS} characters, got {what}', field="id")


def v2_requested_outputs(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """[(output name, as binary)] in request order; all outputs when none are named."""
    params = body.get("parameters")
    binary_all = bool(params.get("binary_data_output")) if isinstance(params, dict) else False
    requested = body.get("outputs")
    if requested is None:
        return [(name, binary_all) for name in OUTPUTS]
    if not isinstance(requested, list):
        raise InvalidInput('"outputs" must be a list of {"name": ...}', field="outputs")
    out = []
    for i, item in enumerate(requested):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise InvalidInput(f"outputs[{i}]: unknown output {name!r}; the model has {list(OUTPUTS)}",
                               field=f"outputs[{i}].name")
        p = item.get("parameters")
        out.append((name, bool(p.get("binary_data", binary_all)) if isinstance(p, dict) else binary_all))
    return out


def v2_response(servable: Servable, body: dict[str, Any], wanted: list[tuple[str, bool]],
                labels: np.ndarray, probabilities: np.ndarray) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(response body, ASGI headers); binary outputs follow the JSON header, as Triton's extension says."""
    arrays = {"label": labels, "probabilities": probabilities}
    outputs = []
    blobs: list[bytes] = []
    for name, as_binary in wanted:
        arr = arrays[name]
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUT_DATATYPES[name], "shape": arr.shape}
        if as_binary:
            blob = np.ascontiguousarray(arr).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = arr.ravel()
        outputs.append(tensor)
    payload: dict[str, Any] = {"model_name": servable.name, "model_version": servable.version_str}
    request_id = body.get("id")
    if request_id is not None:
        payload["id"] = request_id  # checked by v2_request_id
    payload["outputs"] = outputs
    header = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", b"application/json"), (b"content-length", str(len(header)).encode())]
    data = b"".join([header, *blobs])
    return data, [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(data)).encode()),
                  (b"inference-header-content-length", str(len(header)).encode())]


# -- metadata -------------------------------------------------------------------------------


def tf_signature_json(servable: Servable) -> dict[str, Any]:
    card = servable.card
    n_classes = len(card.classes)

    def info(dtype: str, dims: list[int], tensor: str) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}, "name": tensor}

    return {
        "signature_def": {
            "serving_default": {
                "inputs": {card.input.name: info("DT_FLOAT", [-1, card.n_features], f"{card.input.name}:0")},
                "outputs": {"label": info("DT_INT64", [-1], "label:0"),
                            "probabilities": info("DT_FLOAT", [-1, n_classes], "probabilities:0")},
                "method_name": "tensorflow/serving/predict",
            }
        }
    }


# -- TF Serving REST predict ----------------------------------------------------------------


def tf_input_array(body: dict[str, Any], servable: Servable) -> tuple[np.ndarray, bool]:
    """(validated rows, row format?) from {"instances": ...} or {"inputs": ...}."""
    input_name = servable.card.input.name
    contract = servable.contract
    if "instances" in body:
        instances = body["instances"]
        if isinstance(instances, list) and instances and isinstance(instances[0], dict) \
                and input_name in instances[0]:
            # TF's named-input row format: [{"input": [..]}, ...]
            rows = []
            for i, inst in enumerate(instances):
                if not isinstance(inst, dict) or set(inst) != {input_name}:
                    raise InvalidInput(f"instances[{i}] must be {{{input_name!r}: [...]}} like the first row",
                                       field=f"instances[{i}]")
                rows.append(inst[input_name])
            instances = rows
        return contract.rows_to_array(instances, field="instances"), True
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict):
            unknown = set(inputs) - {input_name}
            if unknown or input_name not in inputs:
                raise InvalidInput(f"inputs must hold exactly the model's input {input_name!r}, got {sorted(inputs)}",
                                   field="inputs")
            inputs = inputs[input_name]
        return contract.rows_to_array(inputs, field="inputs"), False
    raise InvalidInput('request body needs "instances" (row format) or "inputs" (columnar format)', field="body")


def tf_predict_payload(labels: np.ndarray, probabilities: np.ndarray, row_format: bool) -> dict[str, Any]:
    if not row_format:
        return {"outputs": {"label": labels, "probabilities": probabilities}}
    return {"predictions": [{"label": label, "probabilities": proba}
                            for label, proba in zip(labels.tolist(), probabilities, strict=True)]}


def tf_status_payload(registry: Registry, name: str, version: int | None, label: str | None) -> dict[str, Any]:
    entry = registry.model(name)
    if label is not None:
        version = entry.resolve(label=label).version
    if version is not None:
        status = entry.statuses.get(version)
        if status is None:
            raise NotFound(f"model {name!r} has no version {version}", field="model_version")
        items = [(version, status)]
    else:
        items = sorted(entry.statuses.items())
    return {"model_version_status": [
        {"version": str(v), "state": s.state,
         "status": {"error_code": s.grpc_code.name, "error_message": s.error}}
        for v, s in items
    ]}


# -- the app --------------------------------------------------------------------------------


def build_rest_app(registry: Registry, *, max_body_bytes: int, is_shutting_down=lambda: False) -> ASGIApp:
    """The Starlette app; `is_shutting_down` flips readiness to 503 while the server drains."""

    def resolve_v2(request: Request) -> Servable:
        p = request.path_params
        version, label = _version_or_label(p.get("version"))
        return registry.resolve(p["model"], version, label)

    async def v2_infer(scope: dict, receive: Any, send: Any, name: str, version_raw: str | None) -> None:
        """POST /v2/models/{m}[/versions/{v}]/infer as a bare ASGI handler: the hot path skips Starlette's
        router, Request and Response objects (about 10 µs a request); errors still go through
        `exception_response`."""
        version, label = _version_or_label(version_raw)
        try:
            with Call(registry, "rest_v2", name) as call:
                call.resolve(version, label)  # 404 before reading a body for an unknown model or version
                declared = header_len = content_type = None
                for key, value in scope["headers"]:
                    if key == b"content-length":
                        declared = value
                    elif key == b"inference-header-content-length":
                        header_len = value
                    elif key == b"content-type":
                        content_type = value
                check_content_type(content_type, PROTOCOL_BODIES, missing_ok=True)
                raw = await receive_body(receive, declared, max_body_bytes)
                if raw is None:
                    call.abandon()
                    return
                binary = None
                if header_len is not None:
                    if not header_len.isdigit() or int(header_len) > len(raw):
                        raise InvalidInput(
                            f"Inference-Header-Content-Length {header_len.decode(errors='replace')!r} does not "
                            f"fit the {len(raw)}-byte body", field="Inference-Header-Content-Length")
                    view = memoryview(raw)
                    body = parse_json_object(view[: int(header_len)])
                    binary = view[int(header_len):]
                else:
                    body = parse_json_object(raw)
                # Resolve again after the await: the version may have been swapped meanwhile.
                servable = call.resolve(version, label)
                v2_request_id(body)
                array = v2_input_array(body, servable, binary)
                wanted = v2_requested_outputs(body)
                labels, probabilities = await call.infer(array, "inputs[0]")
                content, headers = v2_response(servable, body, wanted, labels, probabilities)
        except Exception as exc:
            await exception_response(exc, scope["path"])(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def v2_server(_: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})

    async def v2_live(_: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(_: Request) -> Response:
        ready = registry.ready and not is_shutting_down()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_model(request: Request) -> Response:
        return json_response(cached_v2_metadata(registry, resolve_v2(request)))

    async def v2_model_ready(request: Request) -> Response:
        p = request.path_params
        entry = registry.model(p["model"])  # 404 for an unknown model
        version, label = _version_or_label(p.get("version"))
        try:
            servable = entry.resolve(version, label)
        except NotFound as exc:
            if version is not None:
                known = version in entry.statuses
            else:
                known = label is None or label in entry.config.labels
            if not known:
                raise  # never heard of this version or label: 404
            return json_response({"name": entry.name, "ready": False, "error": exc.message}, 503)
        return json_response({"name": entry.name, "version": servable.version_str, "ready": True})

    async def tf_dispatch(request: Request) -> Response:
        rest = request.path_params["rest"]
        spec, _, verb = rest.partition(":")
        parts = spec.split("/")
        name, version, label, tail = parts[0], None, None, parts[1:]
        if len(tail) >= 2 and tail[0] == "versions" and version_number(tail[1]) is not None:
            version, tail = version_number(tail[1]), tail[2:]
        elif len(tail) >= 2 and tail[0] == "labels":
            label, tail = tail[1], tail[2:]
        if request.method == "POST":
            if verb != "predict" or tail:
                raise NotFound(f"unknown TF Serving REST path /v1/models/{rest}; use .../{name}:predict",
                               field="path")
            return await tf_predict(request, name, version, label)
        if verb or tail not in ([], ["metadata"]):
            raise NotFound(f"unknown TF Serving REST path /v1/models/{rest}", field="path")
        if tail == ["metadata"]:
            servable = registry.resolve(name, version, label)
            return json_response({
                "model_spec": {"name": name, "signature_name": "", "version": servable.version_str},
                "metadata": {"signature_def": tf_signature_json(servable)},
            })
        return json_response(tf_status_payload(registry, name, version, label))

    async def tf_predict(request: Request, name: str, version: int | None, label: str | None) -> Response:
        with Call(registry, "rest_v1", name) as call:
            call.resolve(version, label)  # 404 before reading a body
            check_content_type(request.headers.get("content-type"), PROTOCOL_BODIES, missing_ok=True)
            body = parse_json_object(await read_body(request, max_body_bytes))
            signature = body.get("signature_name", "")
            if signature not in ("", "serving_default"):
                raise InvalidInput(f"unknown signature_name {echo(signature)}; the model has 'serving_default'",
                                   field="signature_name")
            servable = call.resolve(version, label)
            x, row_format = tf_input_array(body, servable)
            labels, probabilities = await call.predict(x)
            return json_response(tf_predict_payload(labels, probabilities, row_format))

    routes = [
        Route("/v2", v2_server),
        Route("/v2/health/live", v2_live),
        Route("/v2/health/ready", v2_ready),
        Route("/v2/models/{model}", v2_model),
        Route("/v2/models/{model}/ready", v2_model_ready),
        Route("/v2/models/{model}/versions/{version}", v2_model),
        Route("/v2/models/{model}/versions/{version}/ready", v2_model_ready),
        Route("/v1/models/{rest:path}", tf_dispatch, methods=["GET", "POST"]),
        Route("/metrics", metrics_endpoint),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

    async def dispatch(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[len("/v2/models/") : -len("/infer")].split("/")
                if len(parts) == 1:
                    return await v2_infer(scope, receive, send, parts[0], None)
                if len(parts) == 3 and parts[1] == "versions":
                    return await v2_infer(scope, receive, send, parts[0], parts[2])
        await app(scope, receive, send)

    return dispatch
