"""The model server over the Open Inference Protocol's gRPC API (inference.GRPCInferenceService).

Driven with `tritonclient.grpc`, unchanged (its own generated stubs), against a real server
process; typed `contents` (which tritonclient never sends) with tritonclient's message classes over
a plain channel; malformed bytes with a raw channel call.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.model_server_helpers import (
    Reference,
    assert_same_predictions,
    copy_repository,
    metric_value,
    running_server,
)

MODEL = "breast-cancer"
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    with running_server(repo, tmp_path_factory.mktemp("logs"), max_batch_size="64", version_policy="all") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def ref():
    return Reference()


def infer_input(x: np.ndarray, datatype: str = "FP32", name: str = "input") -> triton.InferInput:
    arr = np.ascontiguousarray(x, dtype=triton_dtype(datatype))
    tensor = triton.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def triton_dtype(datatype: str) -> type:
    return {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}[datatype]


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_server_live_ready_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "serving-patterns-model-server" and meta.version


def test_model_ready_and_metadata(client):
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    meta = client.get_model_metadata("wine")
    assert meta.name == "wine" and meta.platform == "onnxruntime_onnx"
    assert sorted(meta.versions) == ["1", "2", "3"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 13])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3])]
    assert client.get_model_metadata("wine", "1").versions == meta.versions
    assert error_of(lambda: client.is_model_ready("nope")).status() == "StatusCode.NOT_FOUND"
    assert error_of(lambda: client.is_model_ready(MODEL, "9")).status() == "StatusCode.NOT_FOUND"


def test_holdout_answers_equal_in_process_onnx_runtime(client, ref, holdout):
    _, x, _ = holdout
    want_labels, want_proba = ref(MODEL, 2, x)
    labels, proba = [], []
    for start in range(0, len(x), 50):
        result = client.infer(MODEL, [infer_input(x[start : start + 50])], request_id=f"r{start}")
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == (MODEL, "2", f"r{start}")
        assert {o.name: o.datatype for o in response.outputs} == {"label": "INT64", "probabilities": "FP32"}
        labels.append(result.as_numpy("label"))
        proba.append(result.as_numpy("probabilities"))
    assert_same_predictions(np.concatenate(labels), np.concatenate(proba), want_labels, want_proba)


def test_versions_datatypes_and_requested_outputs(client, ref, holdout):
    _, x, _ = holdout
    for version in (1, 2, 3):
        result = client.infer(MODEL, [infer_input(x[:4])], model_version=str(version))
        assert result.get_response().model_version == str(version)
        assert_same_predictions(result.as_numpy("label"), result.as_numpy("probabilities"), *ref(MODEL, version, x[:4]))
    for datatype in ("FP64", "INT32", "INT64"):
        rows = np.round(x[:3]) if datatype.startswith("INT") else x[:3]
        result = client.infer(MODEL, [infer_input(rows, datatype)])
        assert_same_predictions(result.as_numpy("label"), result.as_numpy("probabilities"), *ref(MODEL, 2, rows))
    result = client.infer(MODEL, [infer_input(x[:2])], outputs=[triton.InferRequestedOutput("label")])
    assert [o.name for o in result.get_response().outputs] == ["label"]
    np.testing.assert_array_equal(result.as_numpy("label"), ref(MODEL, 2, x[:2])[0])


def typed_request(x: np.ndarray, datatype: str = "FP32", **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}
    getattr(tensor.contents, field[datatype]).extend(x.ravel().tolist())
    return request


def test_typed_contents(channel, ref, holdout):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    _, x, _ = holdout
    for datatype in ("FP32", "FP64"):
        response = stub.ModelInfer(typed_request(x[:5].astype(triton_dtype(datatype)), datatype))
        result = triton.InferResult(response)
        assert_same_predictions(result.as_numpy("label"), result.as_numpy("probabilities"),
                                *ref(MODEL, 2, x[:5]))
    rows = np.round(x[:2]).astype(np.int64)
    result = triton.InferResult(stub.ModelInfer(typed_request(rows, "INT64")))
    np.testing.assert_array_equal(result.as_numpy("label"), ref(MODEL, 2, rows)[0])


def test_errors_name_the_problem(client, channel, holdout):
    x = holdout[1][:2]
    cases = [
        (lambda: client.infer("nope", [infer_input(x)]), "StatusCode.NOT_FOUND", "'nope' is not served here"),
        (lambda: client.infer(MODEL, [infer_input(x)], model_version="9"), "StatusCode.NOT_FOUND",
         "no loaded version 9"),
        (lambda: client.infer(MODEL, [infer_input(x[:, :29])]), "StatusCode.INVALID_ARGUMENT",
         "inputs[0] must have shape [rows, 30], got [2, 29]"),
        (lambda: client.infer(MODEL, [infer_input(x[0])]), "StatusCode.INVALID_ARGUMENT",
         "shape [rows, 30], got [30]"),
        (lambda: client.infer(MODEL, [infer_input(np.full((2, 30), "1", dtype=object), "BYTES")]),
         "StatusCode.INVALID_ARGUMENT", "inputs[0].datatype 'BYTES' is not supported"),
        (lambda: client.infer(MODEL, [infer_input(x, name="features")]), "StatusCode.INVALID_ARGUMENT",
         "exactly the model's input 'input'"),
        (lambda: client.infer(MODEL, [infer_input(np.ones((65, 30)))]), "StatusCode.RESOURCE_EXHAUSTED",
         "limit is 64"),
        (lambda: client.infer(MODEL, [infer_input(x)], outputs=[triton.InferRequestedOutput("score")]),
         "StatusCode.INVALID_ARGUMENT", "outputs[0].name 'score' is unknown"),
    ]
    for version in ("²", "1.0", "-1", "v2", " 2", "9" * 40):
        cases.append((lambda v=version: client.infer(MODEL, [infer_input(x)], model_version=v),
                      "StatusCode.INVALID_ARGUMENT", f"model_version {version!r} is not a version number"))
    cases.append((lambda: client.is_model_ready(MODEL, "²"), "StatusCode.INVALID_ARGUMENT",
                  "version '²' is not a version number"))
    cases.append((lambda: client.get_model_metadata(MODEL, "x"), "StatusCode.INVALID_ARGUMENT",
                  "version 'x' is not a version number"))
    for call, status, words in cases:
        err = error_of(call)
        assert err.status() == status, (words, err.status(), err.message())
        assert words in err.message(), (words, err.message())
        assert "Traceback" not in err.message()

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    short = typed_request(x)
    del short.inputs[0].contents.fp32_contents[-1]
    wrong_field = typed_request(x)
    wrong_field.inputs[0].datatype = "INT64"
    raw_and_typed = typed_request(x, raw_input_contents=[x.astype(np.float32).tobytes()])
    raw_count = typed_request(x, raw_input_contents=[b"", b""])
    raw_count.inputs[0].ClearField("contents")
    for request, words in [
        (short, "needs 60 value(s) in contents.fp32_contents, got 59"),
        (wrong_field, "values found in fp32_contents instead"),
        (raw_and_typed, "has values in both contents and raw_input_contents[0]"),
        (raw_count, "raw_input_contents has 2 entries for 1 input(s)"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, err.value.details())
        assert words in err.value.details()


@pytest.mark.parametrize("method", [f"/{SERVICE}/ModelInfer", f"/{SERVICE}/ModelMetadata",
                                    "/tensorflow.serving.PredictionService/Predict",
                                    "/tensorflow.serving.ModelService/GetModelStatus"])
def test_malformed_request_bytes_are_invalid_argument(channel, method):
    call = channel.unary_unary(method)  # no serializers: the bytes go out as they are
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x2a\x80"):
        with pytest.raises(grpc.RpcError) as err:
            call(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (garbage, err.value.details())
        assert "not a valid" in err.value.details() and "Error" not in err.value.details()


def test_health_reflection_and_metrics(server, channel, client, holdout):
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(channel)
    assert SERVICE in set(database.get_services())
    file = database.FindFileContainingSymbol(SERVICE)
    assert [m.name for m in file.service[0].method] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]
    client.infer(MODEL, [infer_input(holdout[1][:1])])
    metrics = httpx.get(f"{server.rest}/metrics").text
    assert metric_value(metrics, "model_server_requests_total", model_name=MODEL, model_version="2",
                        protocol="grpc_v2", status="ok") >= 1
    assert metric_value(metrics, "model_server_requests_total", model_name="", model_version="",
                        protocol="grpc_v2", status="not_found") >= 1


def test_sigterm_finishes_requests_in_flight_and_exits_0(tmp_path, holdout, ref):
    repo = copy_repository(tmp_path / "repo", {MODEL: [2]})
    _, x, _ = holdout
    rows = [x[i : i + 1] for i in range(12)]
    with running_server(repo, tmp_path / "logs", batching="true", batch_max_delay_ms="1500",
                        batch_max_rows="256") as server:

        async def scenario():
            async with triton_aio.InferenceServerClient(server.grpc) as client, \
                    httpx.AsyncClient(base_url=server.rest) as http:
                calls = [asyncio.ensure_future(client.infer(MODEL, [infer_input(r)], client_timeout=30))
                         for r in rows]
                deadline = time.monotonic() + 30
                while (metric_value((await http.get("/metrics")).text, "model_server_queue_depth",
                                    model_name=MODEL, model_version="2") or 0) < len(rows):
                    assert time.monotonic() < deadline, "requests never reached the batching queue"
                    await asyncio.sleep(0.02)
                server.proc.terminate()  # SIGTERM while every request waits for its batch
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(scenario())
        exit_status = server.proc.popen.wait(30)

    assert exit_status == 0, server.proc.log_tail()
    for r, result in zip(rows, results, strict=True):
        assert not isinstance(result, BaseException), repr(result)
        np.testing.assert_array_equal(result.as_numpy("label"), ref(MODEL, 2, r)[0])
