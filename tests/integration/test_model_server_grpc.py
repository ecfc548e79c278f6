"""The model server over gRPC: TF Serving's PredictionService/ModelService, health, reflection.

Called with our wire-compatible stubs (services/protocols/tfs); the official
tensorflow-serving-api client is exercised against the same messages in tests/compat, in its own
environment, because TensorFlow's protos and ours cannot share one process.
"""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.protocols.tfs import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from services.protocols.tfs.tensors import from_numpy, to_numpy
from tests.integration.model_server_helpers import (
    Reference,
    assert_same_predictions,
    copy_repository,
    running_server,
    server_process,
)

MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    (repo / MODEL / "config.yaml").write_text("labels: {stable: 1, canary: 2}\n")
    with running_server(repo, tmp_path_factory.mktemp("logs"), max_batch_size="64") as s:
        yield s


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def predict(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def ref():
    return Reference()


def request(x=None, model=MODEL, version=None, label=None, tensor=None, name="input", **fields):
    req = predict_pb2.PredictRequest(**fields)
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs[name].CopyFrom(tensor if tensor is not None else from_numpy(np.asarray(x, dtype=np.float32)))
    return req


def test_holdout_answers_equal_in_process_onnx_runtime(predict, ref, holdout):
    _, x, _ = holdout
    want_labels, want_proba = ref(MODEL, 2, x)
    labels, proba = [], []
    for start in range(0, len(x), 50):
        response = predict.Predict(request(x[start : start + 50]))
        assert response.model_spec.name == MODEL and response.model_spec.version.value == 2
        assert response.model_spec.signature_name == "serving_default"
        assert response.outputs["label"].dtype == types_pb2.DT_INT64
        assert response.outputs["probabilities"].dtype == types_pb2.DT_FLOAT
        labels.append(to_numpy(response.outputs["label"]))
        proba.append(to_numpy(response.outputs["probabilities"]))
    assert_same_predictions(np.concatenate(labels), np.concatenate(proba), want_labels, want_proba)


def test_version_by_number_and_label_typed_value_fields_and_output_filter(predict, ref, holdout):
    _, x, _ = holdout
    for version, label in ((1, "stable"), (2, "canary"), (3, None)):
        want_labels, want_proba = ref(MODEL, version, x[:4])
        for kwargs in ({"version": version}, {"label": label} if label else {"version": version}):
            response = predict.Predict(request(x[:4], **kwargs))
            assert response.model_spec.version.value == version
            assert_same_predictions(to_numpy(response.outputs["label"]), to_numpy(response.outputs["probabilities"]),
                                    want_labels, want_proba)
    # float_val instead of tensor_content (what tf.make_tensor_proto of a Python list may send), as float64
    typed = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_DOUBLE, double_val=x[:2].ravel().tolist(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                                            for s in (2, 30)]))
    response = predict.Predict(request(tensor=typed, output_filter=["label"]))
    assert list(response.outputs) == ["label"]
    np.testing.assert_array_equal(to_numpy(response.outputs["label"]), ref(MODEL, 2, x[:2])[0])


def test_get_model_metadata_signature_def(predict):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "wine"
    response = predict.GetModelMetadata(req)
    assert response.model_spec.version.value == 2
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["input"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 13]
    assert [d.size for d in sig.outputs["probabilities"].tensor_shape.dim] == [-1, 3]
    assert sig.outputs["label"].dtype == types_pb2.DT_INT64
    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    bad.model_spec.name = "wine"
    with pytest.raises(grpc.RpcError) as err:
        predict.GetModelMetadata(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'graph'" in err.value.details()


def test_get_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = MODEL
    response = stub.GetModelStatus(req)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (1, available, 0), (2, available, 0), (3, available, 0)]
    req.model_spec.version_label = "canary"
    assert [s.version for s in stub.GetModelStatus(req).model_version_status] == [2]
    req.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelStatus(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    desc = ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("tensorflow.serving.PredictionService")
    assert any(s.name == "PredictionService" for s in desc.service)


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_error_codes_name_the_problem(predict, holdout):
    x = holdout[1][:2]
    cases = [
        (request(x, model="nope"), grpc.StatusCode.NOT_FOUND, "'nope' is not served here"),
        (request(x, version=9), grpc.StatusCode.NOT_FOUND, "no loaded version 9"),
        (request(x, label="beta"), grpc.StatusCode.NOT_FOUND, "no version label 'beta'"),
        (request(x, name="features"), grpc.StatusCode.INVALID_ARGUMENT, "exactly the model's input 'input'"),
        (request(x[:, :29]), grpc.StatusCode.INVALID_ARGUMENT, "shape [rows, 30], got [2, 29]"),
        (request(x[0]), grpc.StatusCode.INVALID_ARGUMENT, "shape [rows, 30], got [30]"),
        (request(tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"1"])),
         grpc.StatusCode.INVALID_ARGUMENT, "unsupported tensor dtype DT_STRING"),
        (request(tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, float_val=[1.0] * 7,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=30)]))),
         grpc.StatusCode.INVALID_ARGUMENT, "needs 30 value(s)"),
        (request(np.where(np.arange(60).reshape(2, 30) == 33, np.inf, x)), grpc.StatusCode.INVALID_ARGUMENT,
         "inputs[input][1].mean area is not a finite number"),
        (request(np.ones((65, 30))), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit is 64"),
        (request(x, output_filter=["score"]), grpc.StatusCode.INVALID_ARGUMENT, "output_filter ['score'] unknown"),
    ]
    for req, code, words in cases:
        err = rpc_error(lambda req=req: predict.Predict(req))
        assert err.code() == code, (words, err.code(), err.details())
        assert words in err.details(), (words, err.details())
        assert "Traceback" not in err.details()
    sig = request(x)
    sig.model_spec.signature_name = "classify"
    assert rpc_error(lambda: predict.Predict(sig)).code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("rows", [8_388_608, 2**31])
def test_a_splat_tensor_is_refused_before_it_is_expanded(predict, holdout, rows):
    """A 49-byte TensorProto (one float_val, shape [rows, 30]) once made the server allocate ~1 GiB
    (and answer UNKNOWN at 2**31 rows): the declared size is checked against the limit first."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=rows), tensor_shape_pb2.TensorShapeProto.Dim(size=30)]
    splat = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                                   tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))
    err = rpc_error(lambda: predict.Predict(request(tensor=splat)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"declares {rows * 30} values; at most 1920 are accepted" in err.details(), err.details()
    ok = predict.Predict(request(holdout[1][:2]))  # and the server keeps serving
    assert list(ok.outputs["label"].tensor_shape.dim)[0].size == 2


def test_oversized_message_is_resource_exhausted(predict):
    huge = request(np.ones((40000, 30)))  # ~4.8 MB > the 4 MiB message limit
    err = rpc_error(lambda: predict.Predict(huge))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("which", ["grpc_port", "port"])
def test_a_port_taken_stops_the_process_with_status_1(tmp_path, which):
    """services.core.http.serve: a server that cannot start stops the rest (models unloaded) and exits 1."""
    repo = copy_repository(tmp_path / "repo", {"wine": [1]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = server_process(repo, **{which: str(taken.getsockname()[1])})
        server.proc.start(tmp_path / "logs")
        try:
            status = server.proc.popen.wait(60)
        finally:
            server.proc.stop()
    log = server.proc.log_path.read_text()
    assert status == 1, server.proc.log_tail()
    assert ("start-up failed" if which == "grpc_port" else "HTTP server stopped unexpectedly") in log
    assert "model server stopped" in log
