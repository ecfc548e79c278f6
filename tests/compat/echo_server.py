"""A tiny TensorFlow Serving look-alike built only on OUR generated stubs.

Why it exists: the wire-compatibility test must talk to a real gRPC server
over a real socket, with the official ``tensorflow-serving-api`` client on the
other end. It runs in its own process because our generated modules and
TensorFlow's register the same message names (``tensorflow.TensorProto``, ...)
in protobuf's default descriptor pool, so they cannot share one process.

Behaviour (fixed, so the test can assert exact answers):

* one model, ``echo``, with versions 1 and 2 and labels ``stable`` -> 1,
  ``canary`` -> 2; no version means the latest (2);
* ``Predict`` returns every input multiplied by two under the same alias, in
  the same dtype, honouring ``output_filter``; the response's ``model_spec``
  carries the resolved version, as TensorFlow Serving's does;
* ``GetModelMetadata`` returns one ``serving_default`` signature packed in an
  ``Any`` as a ``SignatureDefMap``;
* ``GetModelStatus`` reports version 1 as END (unloaded) and 2 as AVAILABLE.

Run: ``python -m tests.compat.echo_server [--port 0]``. It prints
``LISTENING <port>`` once ready and stops on SIGTERM/SIGINT or when its stdin
closes, so it cannot outlive a test process that died without cleaning up.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from types import FrameType
from typing import TypeVar

import grpc

from services.protocols.tfs import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    signature_def_pb2,
    status_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from services.protocols.tfs.tensors import from_numpy, to_numpy

MODEL_NAME = "echo"
VERSIONS = (1, 2)
LABELS = {"stable": 1, "canary": 2}
DEFAULT_SIGNATURE = "serving_default"

_Reply = TypeVar("_Reply")


class _RpcError(Exception):
    """Carries a gRPC status code to the servicer boundary."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _resolve_version(spec: model_pb2.ModelSpec) -> int:
    if spec.name != MODEL_NAME:
        raise _RpcError(grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} not found; this server has {MODEL_NAME!r}")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value not in VERSIONS:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"version {spec.version.value} of {MODEL_NAME!r} not found")
        return spec.version.value
    if choice == "version_label":
        if spec.version_label not in LABELS:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, f"version label {spec.version_label!r} not found")
        return LABELS[spec.version_label]
    return max(VERSIONS)


def _resolved_spec(spec: model_pb2.ModelSpec, version: int) -> model_pb2.ModelSpec:
    signature = spec.signature_name or DEFAULT_SIGNATURE
    if signature != DEFAULT_SIGNATURE:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"signature {signature!r} not found")
    out = model_pb2.ModelSpec(name=spec.name, signature_name=signature)
    out.version.value = version
    return out


def _answer(context: grpc.ServicerContext, handler: Callable[[], _Reply]) -> _Reply:
    """Run a handler, turning _RpcError into the matching gRPC status."""
    try:
        return handler()
    except _RpcError as err:
        context.abort(err.code, err.message)
        raise  # not reached: abort() always raises; this keeps the return type honest


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(  # noqa: N802 - the name is the gRPC method name
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return _answer(context, lambda: _predict(request))

    def GetModelMetadata(  # noqa: N802
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _answer(context, lambda: _metadata(request))


def _predict(request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    spec = _resolved_spec(request.model_spec, _resolve_version(request.model_spec))
    if not request.inputs:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "request has no inputs")
    wanted = list(request.output_filter) or sorted(request.inputs)
    unknown = [name for name in wanted if name not in request.inputs]
    if unknown:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown outputs {unknown}")
    response = predict_pb2.PredictResponse(model_spec=spec)
    for name in wanted:
        try:
            array = to_numpy(request.inputs[name])
        except ValueError as err:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: {err}") from err
        # Same dtype out as in: int * 2 stays int, float32 stays float32.
        response.outputs[name].CopyFrom(from_numpy(array * array.dtype.type(2)))
    return response


def _metadata(
    request: get_model_metadata_pb2.GetModelMetadataRequest,
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    spec = _resolved_spec(request.model_spec, _resolve_version(request.model_spec))
    if list(request.metadata_field) != ["signature_def"]:
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}",
        )
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=spec)
    response.metadata["signature_def"].Pack(signature_def_map())
    return response


def signature_def_map() -> get_model_metadata_pb2.SignatureDefMap:
    """The fixed signature the test expects: x (float, [-1, 3]) -> y (float, [-1, 3])."""

    def info(name: str) -> signature_def_pb2.TensorInfo:
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1), tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
        )
        return signature_def_pb2.TensorInfo(name=name, dtype=types_pb2.DT_FLOAT, tensor_shape=shape)

    signature = signature_def_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].CopyFrom(info("x:0"))
    signature.outputs["y"].CopyFrom(info("y:0"))
    result = get_model_metadata_pb2.SignatureDefMap()
    result.signature_def[DEFAULT_SIGNATURE].CopyFrom(signature)
    return result


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return _answer(context, lambda: _status(request))


def _status(request: get_model_status_pb2.GetModelStatusRequest) -> get_model_status_pb2.GetModelStatusResponse:
    # Without a version TF Serving lists all versions, so resolve only when one is given.
    pinned = request.model_spec.WhichOneof("version_choice") is not None
    version = _resolve_version(request.model_spec)
    versions = [version] if pinned else list(VERSIONS)
    states = {1: get_model_status_pb2.ModelVersionStatus.END, 2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=[
            get_model_status_pb2.ModelVersionStatus(
                version=v, state=states[v], status=status_pb2.StatusProto(error_code=0, error_message="")
            )
            for v in versions
        ]
    )


def serve(host: str, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    # Binding port 0 lets the OS pick a free port with no race; we report the real one.
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"could not bind {host}:{port}")
    server.start()

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin() -> None:
        # EOF on stdin means the parent is gone (or closed it on purpose).
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"LISTENING {bound}", flush=True)
    stop.wait()
    server.stop(grace=1.0).wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Echo server speaking the TF Serving gRPC API via our stubs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
