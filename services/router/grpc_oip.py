"""The Open Inference Protocol gRPC codec: `inference.GRPCInferenceService` (KServe V2 gRPC).

    ModelInfer       routed by the dispatcher, like REST and TF Serving Predict: policy, fail-over,
                     ejection, feedback bookkeeping, shadow mirroring (over this protocol, to each
                     shadow's `grpc` address); the reply goes back as the variant sent it
    ModelReady       proxied to the variant serving that version (default: the fallback), as the
    ModelMetadata    REST front's GET /v2/models/{m}[/versions/{v}][/ready]
    ServerLive       answered here: the router is live
    ServerReady      answered here: a routing config is in force
    ServerMetadata   answered here: the router's name and version

`tritonclient.grpc` and any other OIP client work unchanged against the router's gRPC port (the
same port as TF Serving's Predict). Stickiness and overrides come from call metadata (the
config's header names) or, for the stickiness key, the request's `parameters[<body_parameter>]`;
`x-request-id`, `x-variant`, `x-model-version` come back as initial and trailing metadata. The
request is parsed to read and rewrite `model_name` / `model_version` and forwarded as bytes;
errors leave through `services.core.grpc_status`.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from services.core.errors import InvalidInput, Unavailable
from services.core.grpc_status import guard
from services.protocols.oip import open_inference_pb2 as pb
from services.protocols.oip.tensors import output_arrays
from services.router.dispatch import Dispatcher, Request
from services.router.grpc_upstream import Channels, GrpcAnswer, address, answer_or_raise, route, upstream_error
from services.router.settings import SERVER_NAME, SERVER_VERSION
from services.router.shadow import Outputs
from services.router.table import RouteTable, Variant
from services.router.upstream import UpstreamError

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_READY = f"/{SERVICE}/ModelReady"
MODEL_METADATA = f"/{SERVICE}/ModelMetadata"
_LIVE = pb.ServerLiveResponse(live=True).SerializeToString()
_READY = pb.ServerReadyResponse(ready=True).SerializeToString()
_NOT_READY = pb.ServerReadyResponse(ready=False).SerializeToString()
_SERVER_METADATA = pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION).SerializeToString()


class InferRequest(Request):
    """A ModelInfer call: the parsed message (model_name / model_version rewritten per variant)."""

    __slots__ = ("message",)

    def __init__(self, model: str, version: str | None, request_id: str, key: str | None, override: str | None,
                 message: Any) -> None:
        super().__init__(model, version, request_id, key, override)
        self.message = message


class InferUpstream:
    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    async def call(self, variant: Variant, request: InferRequest) -> GrpcAnswer:
        return await self._send(variant, request, variant.timeout_s, (("x-request-id", request.request_id),))

    async def mirror(self, variant: Variant, request: InferRequest, timeout_s: float) -> GrpcAnswer:
        return await self._send(variant, request, timeout_s,
                                (("x-request-id", request.request_id), ("x-shadow", "1")))

    async def _send(self, variant: Variant, request: InferRequest, timeout_s: float,
                    metadata: tuple[tuple[str, str], ...]) -> GrpcAnswer:
        call = self._channels.method(address(variant), MODEL_INFER)
        message = request.message
        message.model_name = variant.model
        message.model_version = "" if variant.version is None else str(variant.version)
        try:
            return GrpcAnswer(await call(message.SerializeToString(), timeout=timeout_s, metadata=metadata))
        except grpc.aio.AioRpcError as exc:
            return answer_or_raise(exc)

    def outputs(self, body: bytes) -> Outputs | None:
        try:
            arrays = output_arrays(pb.ModelInferResponse.FromString(body))
        except (DecodeError, ValueError):
            return None
        labels = arrays.get("label")
        if labels is None:
            return None
        probabilities = arrays.get("probabilities")
        return labels.ravel().tolist(), None if probabilities is None else np.ravel(probabilities).tolist()


class OipCodec:
    """The servicer: bytes in, bytes out, registered on the router's gRPC port (grpc_front)."""

    service = SERVICE

    def __init__(self, dispatcher: Dispatcher, channels: Channels) -> None:
        self.dispatcher = dispatcher
        self.channels = channels
        self.upstream = InferUpstream(channels)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        methods = {"ModelInfer": self.model_infer, "ModelReady": self.model_ready,
                   "ModelMetadata": self.model_metadata, "ServerLive": self.server_live,
                   "ServerReady": self.server_ready, "ServerMetadata": self.server_metadata}
        return {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}

    async def server_live(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _LIVE

    async def server_ready(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _READY if self.dispatcher.table is not None else _NOT_READY

    async def server_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _SERVER_METADATA

    async def model_ready(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await guard(context, lambda: self._metadata(raw, pb.ModelReadyRequest, MODEL_READY))

    async def model_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await guard(context, lambda: self._metadata(raw, pb.ModelMetadataRequest, MODEL_METADATA))

    async def _metadata(self, raw: bytes, message_class: Any, path: str) -> bytes:
        table = self.dispatcher.table
        assert table is not None
        message = _parse(message_class, raw)
        variant = table.metadata_variant(message.name, message.version)
        message.name = variant.model
        message.version = "" if variant.version is None else str(variant.version)
        try:
            call = self.channels.method(address(variant), path)
            return await call(message.SerializeToString(), timeout=variant.timeout_s)
        except UpstreamError as exc:
            raise Unavailable(f"variant {variant.name!r}: {exc.message}") from None
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc) from None

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await guard(context, lambda: route(self.dispatcher, context, self.upstream, raw, _infer_request))


def _infer_request(table: RouteTable, raw: bytes, rid: str, key: str | None, override: str | None) -> InferRequest:
    message = _parse(pb.ModelInferRequest, raw)
    if key is None and table.body_parameter is not None:
        key = _parameter(message.parameters, table.body_parameter) or None
    return InferRequest(message.model_name, message.model_version or None, rid, key, override, message)


def _parse(message_class: Any, raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except DecodeError:
        raise InvalidInput(f"the request is not a valid {message_class.DESCRIPTOR.full_name} message",
                           field="request") from None


def _parameter(parameters: Any, name: str) -> str | None:
    """A request parameter as a stickiness key (any scalar kind), or None."""
    if name not in parameters:
        return None
    parameter = parameters[name]
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else str(getattr(parameter, choice))
