"""gRPC codec: the Open Inference Protocol (KServe V2), `inference.GRPCInferenceService`.

    ServerLive       live: always true while the process answers
    ServerReady      ready: once a model version serves (as /v2/health/ready)
    ModelReady       ready: the version (or the default one) serves; NOT_FOUND for a model or
                     version never heard of; false for a known one that is not loaded
    ServerMetadata   name, version, extensions (none)
    ModelMetadata    name, loaded versions, platform, inputs, outputs (as GET /v2/models/{m})
    ModelInfer       inputs [{"input", FP32|FP64|INT32|INT64, [rows, features]}] in
                     raw_input_contents or typed contents -> outputs "label" INT64 [rows],
                     "probabilities" FP32 [rows, classes] in raw_output_contents

What Triton, MLServer and KServe serve, so `tritonclient.grpc` works unchanged. Versions are
strings of ASCII digits; empty means the default version (the newest that passed its quality gate).
Inference goes through the shared path (`services.model_server.dispatch`); errors are raised here
and answered by `services.core.grpc_status` (INVALID_ARGUMENT naming the field, NOT_FOUND for an
unknown model or version, UNAVAILABLE while a known model has no version loaded).
"""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.core.errors import MAX_NAME_CHARS, InvalidInput, NotFound, Unavailable
from services.model_server.dispatch import Call, version_number
from services.model_server.metadata import OUTPUTS, SERVER_NAME, SERVER_VERSION, cached_v2_metadata
from services.model_server.repository import Registry
from services.protocols.oip import open_inference_pb2 as pb
from services.protocols.oip.tensors import TensorError, add_output, input_arrays

SERVICE: ServiceDescriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_OUTPUT_SET = frozenset(OUTPUTS)


def _version(raw: str, field: str) -> int | None:
    if not raw:
        return None
    version = version_number(raw)
    if version is None:
        raise InvalidInput(f"{field} {raw!r} is not a version number; send ASCII digits, or nothing for the "
                           "default version", field=field)
    return version


def _not_loaded(registry: Registry, name: str, exc: NotFound) -> Exception:
    """NotFound for a model that is known but has nothing loaded is, to this protocol, UNAVAILABLE."""
    entry = registry.models.get(name)
    if entry is not None and not entry.versions:
        return Unavailable(f"model {name!r} has no version loaded yet", field="model_name")
    return exc


def _wanted_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    if not request.outputs:
        return OUTPUTS
    names = tuple(o.name for o in request.outputs)
    for i, name in enumerate(names):
        if name not in _OUTPUT_SET:
            raise InvalidInput(f"outputs[{i}].name {name!r} is unknown; the model has {list(OUTPUTS)}",
                               field=f"outputs[{i}].name")
    return names


class InferenceServicer:
    """inference.GRPCInferenceService; register with `grpc_status.add_servicer`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ServerLiveResponse:  # noqa: N802 - the gRPC method name
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelReadyResponse:  # noqa: N802
        entry = self.registry.model(request.name)  # NOT_FOUND for an unknown model
        version = _version(request.version, "version")
        if version is not None and version not in entry.statuses:
            raise NotFound(f"model {entry.name!r} has no version {version} (known: {sorted(entry.statuses)})",
                           field="version")
        try:
            entry.resolve(version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ModelMetadataResponse:  # noqa: N802
        version = _version(request.version, "version")
        try:
            servable = self.registry.resolve(request.name, version)
        except NotFound as exc:
            raise _not_loaded(self.registry, request.name, exc) from None
        meta = cached_v2_metadata(self.registry, servable)
        cached = servable.cache.get("oip_metadata")
        if cached is None or cached[0] is not meta:
            tensor = pb.ModelMetadataResponse.TensorMetadata
            response = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
                outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
            )
            cached = servable.cache["oip_metadata"] = (meta, response)
        return cached[1]

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:  # noqa: N802
        name = request.model_name
        with Call(self.registry, "grpc_v2", name) as call:
            version = _version(request.model_version, "model_version")
            try:
                servable = call.resolve(version)
            except NotFound as exc:
                raise _not_loaded(self.registry, name, exc) from None
            if len(request.id) > MAX_NAME_CHARS:  # echoed in the answer
                raise InvalidInput(f"id of {len(request.id)} characters is longer than {MAX_NAME_CHARS}", field="id")
            expected = servable.card.input.name
            inputs = request.inputs
            if len(inputs) != 1 or inputs[0].name != expected:
                raise InvalidInput(f"inputs must hold exactly the model's input {expected!r}, got "
                                   f"{[t.name for t in inputs]}", field="inputs")
            try:
                (array,) = input_arrays(request)
            except TensorError as exc:
                raise InvalidInput(str(exc), field=exc.field) from exc
            wanted = _wanted_outputs(request)
            labels, probabilities = await call.infer(array, "inputs[0]")
            response = pb.ModelInferResponse(model_name=servable.name, model_version=servable.version_str,
                                             id=request.id)
            for output in wanted:
                add_output(response, output, labels if output == "label" else probabilities)
            return response


def servicers(registry: Registry) -> list[tuple[ServiceDescriptor, object]]:
    """(service, servicer) pairs for `GrpcFrontend`."""
    return [(SERVICE, InferenceServicer(registry))]
