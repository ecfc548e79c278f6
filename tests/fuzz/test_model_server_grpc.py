"""Fuzz: the model server's gRPC services (TF Serving Predict/GetModelMetadata, OIP ModelInfer) on a real process."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given

from tests.fuzz import grpc_cases as g
from tests.fuzz.checks import ServerGuard, check_grpc, fuzz_settings
from tests.integration.model_server_helpers import Server

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]


@pytest.fixture(scope="module")
def channel(model_server: Server):
    ch = grpc.insecure_channel(model_server.grpc, options=[("grpc.max_receive_message_length", 16 << 20)])
    yield ch
    ch.close()


def guard(model_server: Server, channel: grpc.Channel) -> ServerGuard:
    def still_serves() -> None:
        g.unary(channel, g.PREDICT)(g.valid_predict().SerializeToString())
        g.unary(channel, g.MODEL_INFER)(g.valid_infer().SerializeToString())

    return ServerGuard("model-server", model_server.proc.pid, still_serves)


def test_predict_messages(model_server: Server, channel: grpc.Channel) -> None:
    call = g.unary(channel, g.PREDICT)
    with guard(model_server, channel):
        @fuzz_settings(4)
        @given(req=g.predict_request())
        def run(req) -> None:
            check_grpc("model-server gRPC Predict message", lambda: call(req.SerializeToString()), req)

        run()


def test_oip_infer_messages(model_server: Server, channel: grpc.Channel) -> None:
    call = g.unary(channel, g.MODEL_INFER)
    with guard(model_server, channel):
        @fuzz_settings(4)
        @given(req=g.infer_request())
        def run(req) -> None:
            check_grpc("model-server gRPC ModelInfer message", lambda: call(req.SerializeToString()), req)

        run()


def test_metadata_messages(model_server: Server, channel: grpc.Channel) -> None:
    call = g.unary(channel, g.METADATA)
    with guard(model_server, channel):
        @fuzz_settings(1)
        @given(req=g.metadata_request())
        def run(req) -> None:
            check_grpc("model-server gRPC GetModelMetadata message", lambda: call(req.SerializeToString()), req)

        run()


@pytest.mark.parametrize("method", [g.PREDICT, g.METADATA, g.MODEL_INFER, g.MODEL_METADATA])
def test_raw_and_mutated_bytes(model_server: Server, channel: grpc.Channel, method: str) -> None:
    valid = (g.valid_infer() if "inference" in method else g.valid_predict()).SerializeToString()
    call = g.unary(channel, method)
    with guard(model_server, channel):
        @fuzz_settings(2)
        @given(payload=g.raw_bytes(valid))
        def run(payload: bytes) -> None:
            check_grpc(f"model-server gRPC bytes {method.rsplit('/', 1)[1]}", lambda: call(payload), payload)

        run()
