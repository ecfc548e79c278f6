"""The TF Serving gRPC codec: `PredictionService/Predict` in, the dispatcher, the variant's reply out;
`GetModelMetadata` from the variant serving the requested version (default: the fallback).

    ROUTER_GRPC_PORT=8500   and, per variant in the routing config,   grpc: model-server-host:8500

A TF Serving client calls the router as it would call TF Serving. The request is parsed only to
read and rewrite its `model_spec` (the chosen variant's model and version; a version or label in
the request pins the variant serving it), then forwarded as bytes over a reused channel; the
reply goes back as received. Stickiness and overrides come from call metadata (the config's
sticky and override header names, e.g. `x-user-id`, `x-variant`). The initial and trailing
metadata carry `x-request-id`, `x-variant` and `x-model-version`, as the REST front's headers do.
Policy, fail-over, ejection, feedback bookkeeping and shadow mirroring (over gRPC, to each shadow's
`grpc` address) are the dispatcher's, as for REST. Errors leave through `services.core.grpc_status`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.core.errors import MAX_NAME_CHARS, InvalidInput, Unavailable
from services.core.grpc_status import guard
from services.protocols.tfs import get_model_metadata_pb2, predict_pb2
from services.protocols.tfs.tensors import to_numpy
from services.router.dispatch import Dispatcher, Request
from services.router.grpc_upstream import Channels, GrpcAnswer, address, answer_or_raise, route, upstream_error
from services.router.shadow import Outputs
from services.router.table import RouteTable, Variant
from services.router.upstream import UpstreamError

SERVICE = "tensorflow.serving.PredictionService"
PREDICT = f"/{SERVICE}/Predict"
GET_MODEL_METADATA = f"/{SERVICE}/GetModelMetadata"


class PredictRequest(Request):
    """A Predict call: the parsed message (its model_spec is rewritten per variant)."""

    __slots__ = ("message",)

    def __init__(self, model: str, version: str | None, request_id: str, key: str | None, override: str | None,
                 message: Any) -> None:
        super().__init__(model, version, request_id, key, override)
        self.message = message


class PredictUpstream:
    def __init__(self, channels: Channels) -> None:
        self._channels = channels

    async def call(self, variant: Variant, request: PredictRequest) -> GrpcAnswer:
        return await self._send(variant, request, variant.timeout_s, (("x-request-id", request.request_id),))

    async def mirror(self, variant: Variant, request: PredictRequest, timeout_s: float) -> GrpcAnswer:
        return await self._send(variant, request, timeout_s,
                                (("x-request-id", request.request_id), ("x-shadow", "1")))

    async def _send(self, variant: Variant, request: PredictRequest, timeout_s: float,
                    metadata: tuple[tuple[str, str], ...]) -> GrpcAnswer:
        call = self._channels.method(address(variant), PREDICT)
        _point_at(request.message.model_spec, variant)
        try:
            return GrpcAnswer(await call(request.message.SerializeToString(), timeout=timeout_s, metadata=metadata))
        except grpc.aio.AioRpcError as exc:
            return answer_or_raise(exc)

    def outputs(self, body: bytes) -> Outputs | None:
        try:
            outputs = predict_pb2.PredictResponse.FromString(body).outputs
            if "label" not in outputs:
                return None
            labels = to_numpy(outputs["label"]).ravel().tolist()
            probabilities = (to_numpy(outputs["probabilities"]).ravel().tolist()
                             if "probabilities" in outputs else None)
        except (DecodeError, ValueError):
            return None
        return labels, probabilities


class PredictCodec:
    """The servicer: bytes in, bytes out, registered on the router's gRPC port (grpc_front)."""

    service = SERVICE

    def __init__(self, dispatcher: Dispatcher, channels: Channels) -> None:
        self.dispatcher = dispatcher
        self.channels = channels
        self.upstream = PredictUpstream(channels)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {"Predict": grpc.unary_unary_rpc_method_handler(self.predict),
                "GetModelMetadata": grpc.unary_unary_rpc_method_handler(self.get_model_metadata)}

    async def predict(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await guard(context, lambda: route(self.dispatcher, context, self.upstream, raw, _parse))

    async def get_model_metadata(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await guard(context, lambda: self._metadata(raw))

    async def _metadata(self, raw: bytes) -> bytes:
        """GetModelMetadata from the variant serving the requested version (default: the fallback), as
        the REST front's GET /v2/models/{m} and the OIP codec's ModelMetadata."""
        table = self.dispatcher.table
        assert table is not None
        try:
            message = get_model_metadata_pb2.GetModelMetadataRequest.FromString(raw)
        except DecodeError:
            raise InvalidInput("the request is not a valid tensorflow.serving.GetModelMetadataRequest message",
                               field="request") from None
        spec = message.model_spec
        if len(spec.signature_name) > MAX_NAME_CHARS:
            raise InvalidInput(f"model_spec.signature_name of {len(spec.signature_name)} characters is longer than "
                               f"{MAX_NAME_CHARS}", field="model_spec.signature_name")
        choice = spec.WhichOneof("version_choice")
        version = None if choice is None else str(spec.version.value) if choice == "version" else spec.version_label
        variant = table.metadata_variant(spec.name, version)
        _point_at(spec, variant)
        try:
            call = self.channels.method(address(variant), GET_MODEL_METADATA)
            return await call(message.SerializeToString(), timeout=variant.timeout_s)
        except UpstreamError as exc:
            raise Unavailable(f"variant {variant.name!r}: {exc.message}") from None
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc) from None


def _point_at(spec: Any, variant: Variant) -> None:
    """Rewrite a ModelSpec to name the variant's model and version."""
    spec.name = variant.model
    version = variant.version
    if isinstance(version, int):
        spec.version.value = version
    elif isinstance(version, str):
        spec.version_label = version
    else:
        spec.ClearField("version_choice")


def _parse(table: RouteTable, raw: bytes, rid: str, key: str | None, override: str | None) -> PredictRequest:
    try:
        message = predict_pb2.PredictRequest.FromString(raw)
    except DecodeError:
        raise InvalidInput("the request is not a valid tensorflow.serving.PredictRequest message",
                           field="request") from None
    spec = message.model_spec
    if len(spec.signature_name) > MAX_NAME_CHARS:  # refused here: it never reaches (nor counts against) a variant
        raise InvalidInput(f"model_spec.signature_name of {len(spec.signature_name)} characters is longer than "
                           f"{MAX_NAME_CHARS}", field="model_spec.signature_name")
    choice = spec.WhichOneof("version_choice")
    version = None if choice is None else str(spec.version.value) if choice == "version" else spec.version_label
    return PredictRequest(spec.name, version, rid, key, override, message)
