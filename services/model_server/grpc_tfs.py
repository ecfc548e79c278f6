"""gRPC codec: TensorFlow Serving's API (`PredictionService`, `ModelService`).

    tensorflow.serving.PredictionService/Predict            inputs {"input": TensorProto [rows, features]}
                                                            -> outputs {"label": int64 [rows],
                                                                        "probabilities": float [rows, classes]}
    tensorflow.serving.PredictionService/GetModelMetadata   metadata_field ["signature_def"] -> SignatureDefMap
    tensorflow.serving.ModelService/GetModelStatus          per-version state (AVAILABLE, END, ...) and load errors

The model is chosen by `ModelSpec.name`, plus `version` (a number) or `version_label` (from the
model's config.yaml); with neither, the newest loaded version that passed its quality gate.
Input tensors may be DT_FLOAT, DT_DOUBLE, DT_INT32 or DT_INT64, in `tensor_content` or the typed
value fields (`services.protocols.tfs.tensors`).

Predict goes through the shared inference path (`services.model_server.dispatch`). Errors: the
servicers only raise; `services.core.grpc_status` (the servicers are registered with its
`add_servicer`) is the one place a `ServingError` becomes a gRPC status (NOT_FOUND,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...). Anything unexpected is logged and answered
INTERNAL without a trace. The server, health and reflection are in `grpc_server.py`.

The messages come from our own wire-compatible protos (no TensorFlow in this process); see
services/protocols/tfs/README.md.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.protobuf.descriptor import ServiceDescriptor

from services.core.errors import MAX_NAME_CHARS, InvalidInput, NotFound, PayloadTooLarge, echo
from services.model_server.dispatch import Call
from services.model_server.metadata import OUTPUTS
from services.model_server.repository import Registry, Servable
from services.protocols.tfs import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    signature_def_pb2,
    status_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from services.protocols.tfs.tensors import TensorTooLarge, from_numpy, to_numpy

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_OUTPUTS = frozenset(OUTPUTS)
PREDICTION_SERVICE: ServiceDescriptor = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODEL_SERVICE: ServiceDescriptor = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
_STATES = get_model_status_pb2.ModelVersionStatus.State
_DT_FLOAT = types_pb2.DT_FLOAT
_F4 = np.dtype("<f4")


def _version_choice(spec: Any) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for; neither: the default version."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _check_signature(spec: Any) -> None:
    name = spec.signature_name
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"model_spec.signature_name of {len(name)} characters is longer than {MAX_NAME_CHARS}; "
                           f"the model has {SIGNATURE!r}", field="model_spec.signature_name")
    if name not in ("", SIGNATURE):
        raise InvalidInput(f"unknown signature_name {echo(name)}; the model has {SIGNATURE!r}",
                           field="model_spec.signature_name")


def _tensor_info(dtype: int, dims: list[int], name: str) -> signature_def_pb2.TensorInfo:
    return signature_def_pb2.TensorInfo(
        name=name,
        dtype=dtype,  # type: ignore[arg-type]
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                             for d in dims]),
    )


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    card = servable.card
    signature = signature_def_pb2.SignatureDef(
        inputs={card.input.name: _tensor_info(types_pb2.DT_FLOAT, [-1, card.n_features], f"{card.input.name}:0")},
        outputs={
            "label": _tensor_info(types_pb2.DT_INT64, [-1], "label:0"),
            "probabilities": _tensor_info(types_pb2.DT_FLOAT, [-1, len(card.classes)], "probabilities:0"),
        },
        method_name=PREDICT_METHOD,
    )
    return get_model_metadata_pb2.SignatureDefMap(signature_def={SIGNATURE: signature})


class _GrpcView:
    """What Predict needs of one servable, computed once per loaded version."""

    __slots__ = ("input_name", "input_field", "model_spec")

    def __init__(self, servable: Servable) -> None:
        self.input_name = servable.card.input.name
        self.input_field = f"inputs[{self.input_name}]"
        self.model_spec = model_pb2.ModelSpec(name=servable.name, signature_name=SIGNATURE)
        self.model_spec.version.value = servable.version


def _view(servable: Servable) -> _GrpcView:
    view = servable.cache.get("grpc_view")
    if view is None:
        view = servable.cache["grpc_view"] = _GrpcView(servable)
    return view


def predict_response(view: _GrpcView, labels: np.ndarray, probabilities: np.ndarray,
                     wanted: Any = ()) -> predict_pb2.PredictResponse:
    """The PredictResponse for these outputs (all of them unless `wanted` names some)."""
    outputs = {}
    if not wanted or "label" in wanted:
        outputs["label"] = from_numpy(labels)
    if not wanted or "probabilities" in wanted:
        outputs["probabilities"] = from_numpy(probabilities)
    return predict_pb2.PredictResponse(outputs=outputs, model_spec=view.model_spec)


def _input_array(tensor: Any, max_elements: int) -> np.ndarray:
    """The request's input tensor as an array. The common case (float32 `tensor_content`, rows x
    features) reads the bytes in place; anything else goes through `to_numpy`, which handles every
    supported dtype and encoding and names what is wrong."""
    if tensor.dtype == _DT_FLOAT:
        content = tensor.tensor_content
        dims = tensor.tensor_shape.dim
        if content and len(dims) == 2 and not tensor.tensor_shape.unknown_rank:
            rows, cols = dims[0].size, dims[1].size
            if rows >= 0 and cols >= 0 and len(content) == rows * cols * 4:
                return np.frombuffer(content, dtype=_F4).reshape(rows, cols)  # read-only; nothing writes to it
    return to_numpy(tensor, max_elements)


class PredictionServicer:
    """tensorflow.serving.PredictionService; register with `grpc_status.add_servicer`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
                      ) -> predict_pb2.PredictResponse:  # noqa: N802 - the gRPC method name
        spec = request.model_spec
        with Call(self.registry, "grpc", spec.name) as call:
            servable = call.resolve(*_version_choice(spec))
            if spec.signature_name:
                _check_signature(spec)
            view = servable.cache.get("grpc_view") or _view(servable)
            expected = view.input_name
            inputs = request.inputs
            if len(inputs) != 1 or expected not in inputs:
                raise InvalidInput(f"PredictRequest.inputs must hold exactly the model's input {expected!r}, "
                                   f"got {sorted(inputs)}", field="inputs")
            contract = servable.contract
            try:
                arr = _input_array(inputs[expected], contract.max_batch_size * contract.n_features)
            except TensorTooLarge as exc:
                raise PayloadTooLarge(f"inputs[{expected!r}]: {exc} ({contract.max_batch_size} rows of "
                                      f"{contract.n_features} features)", field=view.input_field) from exc
            except ValueError as exc:
                raise InvalidInput(f"inputs[{expected!r}]: {exc}", field=view.input_field) from exc
            wanted = request.output_filter
            if wanted and not set(wanted) <= _OUTPUTS:
                raise InvalidInput(f"output_filter {sorted(set(wanted) - _OUTPUTS)} unknown; the model has "
                                   f"{sorted(_OUTPUTS)}", field="output_filter")
            labels, probabilities = await call.infer(arr, view.input_field)
            return predict_response(view, labels, probabilities, wanted)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context: grpc.aio.ServicerContext
                               ) -> get_model_metadata_pb2.GetModelMetadataResponse:  # noqa: N802
        spec = request.model_spec
        servable = self.registry.resolve(spec.name, *_version_choice(spec))
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput("GetModelMetadataRequest must name at least one metadata_field ('signature_def')",
                               field="metadata_field")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise InvalidInput(f"metadata_field {unsupported} not supported; only 'signature_def' is",
                               field="metadata_field")
        cached = servable.cache.get("grpc_metadata")
        if cached is None:
            cached = get_model_metadata_pb2.GetModelMetadataResponse()
            cached.model_spec.name = servable.name
            cached.model_spec.version.value = servable.version
            cached.model_spec.signature_name = SIGNATURE
            cached.metadata["signature_def"].Pack(signature_def_map(servable))
            servable.cache["grpc_metadata"] = cached
        return cached


class ModelStatusServicer:
    """tensorflow.serving.ModelService; register with `grpc_status.add_servicer`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context: grpc.aio.ServicerContext
                             ) -> get_model_status_pb2.GetModelStatusResponse:  # noqa: N802
        spec = request.model_spec
        entry = self.registry.model(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            versions = [entry.resolve(label=spec.version_label).version]
        elif choice == "version":
            if spec.version.value not in entry.statuses:
                raise NotFound(f"model {spec.name!r} has no version {spec.version.value} "
                               f"(known: {sorted(entry.statuses)})", field="model_spec.version")
            versions = [spec.version.value]
        else:
            versions = sorted(entry.statuses)
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            s = entry.statuses[v]
            response.model_version_status.append(get_model_status_pb2.ModelVersionStatus(
                version=v,
                state=_STATES.Value(s.state),
                status=status_pb2.StatusProto(error_code=s.grpc_code.value[0], error_message=s.error),
            ))
        return response


def servicers(registry: Registry) -> list[tuple[ServiceDescriptor, object]]:
    """(service, servicer) pairs for `GrpcFrontend`."""
    return [(PREDICTION_SERVICE, PredictionServicer(registry)), (MODEL_SERVICE, ModelStatusServicer(registry))]
