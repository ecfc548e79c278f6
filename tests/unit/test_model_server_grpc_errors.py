"""Every gRPC method of the model server answers failures through services.core.grpc_status:
an unexpected exception is INTERNAL with a generic message (never UNKNOWN, never a trace), counted
under status="internal"; the frontend runs in-process on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from prometheus_client import generate_latest

from services.core.grpc_status import INTERNAL_MESSAGE
from services.model_server.grpc_server import GrpcFrontend
from services.model_server.repository import Registry
from services.model_server.settings import ModelServerSettings
from services.protocols.oip import open_inference_pb2 as oip
from services.protocols.oip import open_inference_pb2_grpc as oip_grpc
from services.protocols.tfs import predict_pb2, prediction_service_pb2_grpc
from services.protocols.tfs.tensors import from_numpy
from services.stack.process import free_port
from tests.integration.model_server_helpers import copy_repository, metric_value


def internal_count(protocol: str) -> float:
    return metric_value(generate_latest().decode(), "model_server_requests_total", model_name="wine",
                        model_version="2", protocol=protocol, status="internal") or 0


def test_unexpected_errors_are_internal_and_generic(tmp_path):
    repo = copy_repository(tmp_path / "repo", {"wine": [2]})

    async def scenario() -> None:
        registry = Registry(ModelServerSettings(model_repository=repo, poll_interval_s=0))
        await registry.start()
        frontend = GrpcFrontend(registry, host="127.0.0.1", port=free_port(), max_message_bytes=1 << 20)
        await frontend.start()
        try:
            async def broken(x: np.ndarray) -> None:
                raise RuntimeError("secret internals")

            registry.resolve("wine").predict = broken
            x = np.ones((1, 13), np.float32)
            before = internal_count("grpc"), internal_count("grpc_v2")
            async with grpc.aio.insecure_channel(frontend.address) as channel:
                tfs = predict_pb2.PredictRequest()
                tfs.model_spec.name = "wine"
                tfs.inputs["input"].CopyFrom(from_numpy(x))
                infer = oip.ModelInferRequest(model_name="wine", raw_input_contents=[x.tobytes()])
                infer.inputs.add(name="input", datatype="FP32", shape=[1, 13])
                for call in (prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(tfs),
                             oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)):
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.INTERNAL, exc
                        assert exc.details() == INTERNAL_MESSAGE
                    else:
                        raise AssertionError("a broken predict answered")
            assert (internal_count("grpc"), internal_count("grpc_v2")) == (before[0] + 1, before[1] + 1)
        finally:
            await frontend.stop(0)
            await registry.stop()

    asyncio.run(scenario())
